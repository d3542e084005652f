//! Stage declarations: kind, version, ports, params, capabilities and the
//! function that runs it.

use std::collections::HashSet;
use std::sync::Arc;

use crate::params::{ParamSpec, ParamValues, Params};
use crate::pb;
use crate::{DType, Error, RunContext};

/// One input or output of a stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    name: String,
    kind: pb::PortKind,
    dtype: Option<DType>,
    level: u32,
    optional: bool,
    doc: String,
}

impl Port {
    fn new(name: &str, kind: pb::PortKind, dtype: Option<DType>, level: u32) -> Port {
        Port {
            name: name.to_string(),
            kind,
            dtype,
            level,
            optional: false,
            doc: String::new(),
        }
    }
    /// A grid at the native resolution.
    pub fn grid(name: &str, dtype: DType) -> Port {
        Port::new(name, pb::PortKind::Grid, Some(dtype), 0)
    }
    /// A grid at a pyramid level (1 = half resolution).
    pub fn grid_at(name: &str, dtype: DType, level: u32) -> Port {
        Port::new(name, pb::PortKind::Grid, Some(dtype), level)
    }
    /// An Arrow IPC table (a dynamic output: its size is known at the end).
    pub fn table(name: &str) -> Port {
        Port::new(name, pb::PortKind::Table, None, 0)
    }
    /// Opaque bytes (a dynamic output).
    pub fn blob(name: &str) -> Port {
        Port::new(name, pb::PortKind::Blob, None, 0)
    }
    /// An input that may be left unwired (check [`RunContext::has_input`]).
    pub fn optional(mut self) -> Port {
        self.optional = true;
        self
    }
    pub fn doc(mut self, doc: &str) -> Port {
        self.doc = doc.to_string();
        self
    }
    pub fn name(&self) -> &str {
        &self.name
    }

    fn to_proto(&self) -> pb::Port {
        pb::Port {
            name: self.name.clone(),
            kind: self.kind as i32,
            dtype: self.dtype.map_or(0, |d| d.to_proto() as i32),
            level: self.level,
            optional: self.optional,
            doc: self.doc.clone(),
        }
    }
}

type RunFn = dyn Fn(&RunContext, &ParamValues<'_>) -> Result<(), Error> + Send + Sync;

/// A stage kind this plugin offers. Build it with [`Stage::new`] and the
/// builder methods, then pass it to [`serve`](crate::serve).
#[derive(Clone)]
pub struct Stage {
    desc: pb::StageDescriptor,
    specs: Arc<[ParamSpec]>,
    run: Arc<RunFn>,
    names: HashSet<String>,
}

impl Stage {
    /// A stage of `kind` (dotted, unique across all plugins of a run) at
    /// `version` (part of its cache key: bump it when outputs change). `run`
    /// gets the run's context and the decoded parameters.
    ///
    /// # Panics
    /// On an empty kind, an empty version or a malformed parameter list:
    /// programming errors the author sees on the first start (or in the
    /// first test through [`testing::Harness`](crate::testing::Harness)).
    pub fn new<P, F>(kind: &str, version: &str, run: F) -> Stage
    where
        P: Params,
        F: Fn(&RunContext, P) -> Result<(), Error> + Send + Sync + 'static,
    {
        assert!(!kind.is_empty(), "pipehost: Stage::new with an empty kind");
        // The version is part of every cache key: an output computed by an
        // older build must never be served for a changed stage.
        assert!(
            !version.trim().is_empty(),
            "pipehost: stage {kind}: a version is required (it is part of the cache key): \
             give Stage::new a version such as \"1.0.0\" and bump it whenever the outputs change"
        );
        let specs: Vec<ParamSpec> = P::specs();
        let mut seen = HashSet::new();
        for s in &specs {
            assert!(
                seen.insert(s.name().to_string()),
                "pipehost: stage {kind}: param {:?} declared twice",
                s.name()
            );
        }
        let desc = pb::StageDescriptor {
            kind: kind.to_string(),
            version: version.trim().to_string(),
            params: specs.iter().map(ParamSpec::to_proto).collect(),
            capabilities: Some(pb::Capabilities::default()),
            ..Default::default()
        };
        let run = move |ctx: &RunContext, values: &ParamValues<'_>| run(ctx, P::decode(values)?);
        Stage {
            desc,
            specs: specs.into(),
            run: Arc::new(run),
            names: HashSet::new(),
        }
    }

    pub fn doc(mut self, doc: &str) -> Stage {
        self.desc.doc = doc.to_string();
        self
    }

    /// Declares an input port.
    ///
    /// # Panics
    /// On a duplicate or empty port name, or a grid without a dtype.
    pub fn input(mut self, p: Port) -> Stage {
        self.check_port(&p);
        self.desc.inputs.push(p.to_proto());
        self
    }

    /// Declares an output port. Grid outputs are allocated by the host;
    /// tables and blobs are created by the stage ([`RunContext::dynamic_output`]).
    pub fn output(mut self, p: Port) -> Stage {
        self.check_port(&p);
        assert!(
            !p.optional,
            "pipehost: stage {}: output {:?} cannot be optional",
            self.desc.kind, p.name
        );
        self.desc.outputs.push(p.to_proto());
        self
    }

    /// Lets the host run several instances of this kind at once in one process.
    pub fn concurrent(mut self, yes: bool) -> Stage {
        self.caps().concurrent_runs = yes;
        self
    }

    /// Threads the stage keeps busy (a scheduling hint).
    pub fn threads(mut self, n: u32) -> Stage {
        self.caps().threads = n;
        self
    }

    /// A named resource the stage holds while it runs, e.g. `("gpu", 1)`.
    pub fn resource(mut self, name: &str, count: u32) -> Stage {
        self.caps().resources.push(pb::ResourceRequest {
            name: name.to_string(),
            count,
        });
        self
    }

    /// The protocol descriptor sent in Describe.
    pub fn descriptor(&self) -> &pb::StageDescriptor {
        &self.desc
    }

    pub fn kind(&self) -> &str {
        &self.desc.kind
    }

    pub(crate) fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    pub(crate) fn call(&self, ctx: &RunContext, values: &ParamValues<'_>) -> Result<(), Error> {
        (self.run)(ctx, values)
    }

    fn caps(&mut self) -> &mut pb::Capabilities {
        self.desc.capabilities.get_or_insert_with(Default::default)
    }

    fn check_port(&mut self, p: &Port) {
        let kind = &self.desc.kind;
        assert!(
            !p.name.is_empty() && self.names.insert(p.name.clone()),
            "pipehost: stage {kind}: port name {:?} is empty or used twice",
            p.name
        );
        assert!(
            p.kind != pb::PortKind::Grid || p.dtype.is_some(),
            "pipehost: stage {kind}: grid port {:?} has no dtype",
            p.name
        );
    }
}
