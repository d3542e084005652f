//! Typed stage parameters: a stage declares [`ParamSpec`]s (type, default,
//! doc) and decodes the host's values into its own struct through
//! [`Params`]; the [`params!`](crate::params!) macro writes both from one
//! struct definition, so each name is written once. Ints and floats stay apart on the wire so every SDK decodes
//! them alike; a float parameter also accepts an integer value.

use std::collections::HashMap;
use std::fmt;

use crate::pb;
use crate::Error;

/// A parameter's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    Bool,
    Int,
    Float,
    String,
}

impl ParamType {
    fn to_proto(self) -> pb::ParamType {
        match self {
            ParamType::Bool => pb::ParamType::Bool,
            ParamType::Int => pb::ParamType::Int,
            ParamType::Float => pb::ParamType::Float,
            ParamType::String => pb::ParamType::String,
        }
    }
}

/// A parameter value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "boolean {b}"),
            Value::Int(i) => write!(f, "integer {i}"),
            Value::Float(x) => write!(f, "float {x}"),
            Value::String(s) => write!(f, "string {s:?}"),
        }
    }
}

impl Value {
    pub(crate) fn from_proto(v: &pb::Value) -> Option<Value> {
        use pb::value::Kind;
        Some(match v.kind.as_ref()? {
            Kind::BoolValue(b) => Value::Bool(*b),
            Kind::IntValue(i) => Value::Int(*i),
            Kind::FloatValue(x) => Value::Float(*x),
            Kind::StringValue(s) => Value::String(s.clone()),
        })
    }

    pub(crate) fn to_proto(&self) -> pb::Value {
        use pb::value::Kind;
        pb::Value {
            kind: Some(match self {
                Value::Bool(b) => Kind::BoolValue(*b),
                Value::Int(i) => Kind::IntValue(*i),
                Value::Float(x) => Kind::FloatValue(*x),
                Value::String(s) => Kind::StringValue(s.clone()),
            }),
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Value {
        Value::Int(v.into())
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::Float(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::String(v)
    }
}

/// The declaration of one parameter. Without a default it is required.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    name: String,
    ty: ParamType,
    default: Option<Value>,
    doc: String,
}

impl ParamSpec {
    fn new(name: &str, ty: ParamType) -> ParamSpec {
        assert!(!name.is_empty(), "pipehost: a parameter has an empty name");
        ParamSpec {
            name: name.to_string(),
            ty,
            default: None,
            doc: String::new(),
        }
    }
    /// A boolean parameter.
    pub fn bool(name: &str) -> ParamSpec {
        ParamSpec::new(name, ParamType::Bool)
    }
    /// An integer parameter (i64 on the wire).
    pub fn int(name: &str) -> ParamSpec {
        ParamSpec::new(name, ParamType::Int)
    }
    /// A float parameter (f64 on the wire).
    pub fn float(name: &str) -> ParamSpec {
        ParamSpec::new(name, ParamType::Float)
    }
    /// A string parameter.
    pub fn string(name: &str) -> ParamSpec {
        ParamSpec::new(name, ParamType::String)
    }
    /// A parameter declared by the Rust type it is read as: `bool`, a
    /// float, an integer or `String`.
    pub fn of<T: ParamKind>(name: &str) -> ParamSpec {
        ParamSpec::new(name, T::TYPE)
    }

    /// Sets the default, which makes the parameter optional.
    ///
    /// # Panics
    /// If the value does not have the parameter's type (an integer default
    /// for a float parameter is converted).
    pub fn default(mut self, v: impl Into<Value>) -> ParamSpec {
        let v = match (self.ty, v.into()) {
            (ParamType::Float, Value::Int(i)) => Value::Float(i as f64),
            (ParamType::Bool, v @ Value::Bool(_))
            | (ParamType::Int, v @ Value::Int(_))
            | (ParamType::Float, v @ Value::Float(_))
            | (ParamType::String, v @ Value::String(_)) => v,
            (t, v) => panic!(
                "pipehost: param {:?} is {t:?} but its default is {v}",
                self.name
            ),
        };
        self.default = Some(v);
        self
    }

    /// Documentation shown by `pipehost plugins`.
    pub fn doc(mut self, doc: &str) -> ParamSpec {
        self.doc = doc.to_string();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn param_type(&self) -> ParamType {
        self.ty
    }
    pub fn default_value(&self) -> Option<&Value> {
        self.default.as_ref()
    }

    pub(crate) fn to_proto(&self) -> pb::ParamSpec {
        pb::ParamSpec {
            name: self.name.clone(),
            r#type: self.ty.to_proto() as i32,
            default: self.default.as_ref().map(Value::to_proto),
            doc: self.doc.clone(),
        }
    }
}

/// A stage's parameter struct: its declarations and how to read it from the
/// values of a run.
pub trait Params: Sized + Send + 'static {
    /// The parameters the stage declares, in order.
    fn specs() -> Vec<ParamSpec>;
    /// Reads the struct; [`ParamValues::get`] fills in defaults and checks types.
    fn decode(values: &ParamValues<'_>) -> Result<Self, Error>;
}

/// No parameters.
impl Params for () {
    fn specs() -> Vec<ParamSpec> {
        Vec::new()
    }
    fn decode(_: &ParamValues<'_>) -> Result<(), Error> {
        Ok(())
    }
}

/// The parameter values of one run, with the stage's declarations.
pub struct ParamValues<'a> {
    values: &'a HashMap<String, pb::Value>,
    specs: &'a [ParamSpec],
}

impl<'a> ParamValues<'a> {
    pub fn new(values: &'a HashMap<String, pb::Value>, specs: &'a [ParamSpec]) -> ParamValues<'a> {
        ParamValues { values, specs }
    }

    /// The value of parameter `name`, its default when the run has none.
    pub fn value(&self, name: &str) -> Result<Value, Error> {
        let spec =
            self.specs.iter().find(|s| s.name == name).ok_or_else(|| {
                Error::param(name, "is not declared by the stage (add a ParamSpec)")
            })?;
        match self.values.get(name) {
            Some(v) => Value::from_proto(v).ok_or_else(|| Error::param(name, "has no value")),
            None => spec
                .default
                .clone()
                .ok_or_else(|| Error::param(name, "is required")),
        }
    }

    /// The value of parameter `name` as a Rust type: `bool`, `i64`, `i32`,
    /// `u32`, `u64`, `usize`, `f64`, `f32` or `String`.
    pub fn get<T: FromValue>(&self, name: &str) -> Result<T, Error> {
        T::from_value(self.value(name)?).map_err(|e| Error::param(name, e))
    }
}

/// Rust types a parameter value converts to; the error says why not.
pub trait FromValue: Sized {
    fn from_value(v: Value) -> Result<Self, String>;
}

impl FromValue for bool {
    fn from_value(v: Value) -> Result<bool, String> {
        match v {
            Value::Bool(b) => Ok(b),
            v => Err(format!("expected a boolean, got {v}")),
        }
    }
}

impl FromValue for String {
    fn from_value(v: Value) -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s),
            v => Err(format!("expected a string, got {v}")),
        }
    }
}

impl FromValue for f64 {
    fn from_value(v: Value) -> Result<f64, String> {
        match v {
            Value::Float(x) => Ok(x),
            Value::Int(i) => Ok(i as f64),
            v => Err(format!("expected a number, got {v}")),
        }
    }
}

impl FromValue for f32 {
    fn from_value(v: Value) -> Result<f32, String> {
        let x = f64::from_value(v)?;
        if x.is_finite() && x.abs() > f64::from(f32::MAX) {
            return Err(format!("{x} does not fit in f32"));
        }
        Ok(x as f32)
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: Value) -> Result<$t, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(i)
                        .map_err(|_| format!("{i} does not fit in {}", stringify!($t))),
                    v => Err(format!("expected an integer, got {v}")),
                }
            }
        }
    )*};
}
from_int!(i64, i32, i16, i8, u64, u32, u16, u8, usize, isize);

/// The Rust types a parameter can be declared as ([`ParamSpec::of`], the
/// [`params!`](crate::params!) macro), with the wire type each declares.
pub trait ParamKind: FromValue {
    const TYPE: ParamType;
}

macro_rules! param_kind {
    ($($t:ty => $k:ident),*) => {$(
        impl ParamKind for $t { const TYPE: ParamType = ParamType::$k; }
    )*};
}
param_kind!(bool => Bool, String => String, f64 => Float, f32 => Float,
    i64 => Int, i32 => Int, i16 => Int, i8 => Int, u64 => Int, u32 => Int,
    u16 => Int, u8 => Int, usize => Int, isize => Int);

/// Joins the lines of a field's doc comment into one paragraph (used by
/// [`params!`](crate::params!)).
#[doc(hidden)]
pub fn doc_text(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Declares a stage's parameter struct and its [`Params`] impl at once:
/// each field is a parameter of the same name, its type is the declared
/// type ([`ParamKind`]), `= value` gives the default (without one the
/// parameter is required), and the field's doc comment is the parameter's
/// doc, shown by `pipehost plugins`.
///
/// ```
/// pipehost::params! {
///     /// The parameters of `terrain.smooth`.
///     pub struct Smooth {
///         /// How much of the 3×3 mean to blend in, 0..1.
///         pub strength: f64 = 0.5,
///         /// Smoothing passes.
///         pub passes: u32 = 1,
///         /// A label; required (no default).
///         pub label: String,
///     }
/// }
/// use pipehost::Params;
/// let specs = Smooth::specs();
/// assert_eq!(specs[0].name(), "strength");
/// assert_eq!(specs[2].default_value(), None);
/// ```
#[macro_export]
macro_rules! params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:expr])*
                $fvis:vis $field:ident : $ty:ty $(= $default:expr)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[doc = $doc])* $fvis $field: $ty, )*
        }

        impl $crate::Params for $name {
            fn specs() -> ::std::vec::Vec<$crate::ParamSpec> {
                ::std::vec![$(
                    $crate::ParamSpec::of::<$ty>(::std::stringify!($field))
                        $(.default($default))?
                        .doc(&$crate::__doc_text(&[$($doc),*]))
                ),*]
            }
            fn decode(
                values: &$crate::ParamValues<'_>,
            ) -> ::std::result::Result<Self, $crate::Error> {
                ::std::result::Result::Ok($name {
                    $( $field: values.get(::std::stringify!($field))?, )*
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct P {
        n: u32,
        gain: f64,
        name: String,
        on: bool,
        req: i64,
    }

    impl Params for P {
        fn specs() -> Vec<ParamSpec> {
            vec![
                ParamSpec::int("n").default(4).doc("count"),
                ParamSpec::float("gain").default(1), // an int default for a float is converted
                ParamSpec::string("name").default("x"),
                ParamSpec::bool("on").default(false),
                ParamSpec::int("req"),
            ]
        }
        fn decode(v: &ParamValues<'_>) -> Result<P, Error> {
            Ok(P {
                n: v.get("n")?,
                gain: v.get("gain")?,
                name: v.get("name")?,
                on: v.get("on")?,
                req: v.get("req")?,
            })
        }
    }

    fn values(pairs: &[(&str, Value)]) -> HashMap<String, pb::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_proto()))
            .collect()
    }

    fn decode(pairs: &[(&str, Value)]) -> Result<P, Error> {
        let specs = P::specs();
        P::decode(&ParamValues::new(&values(pairs), &specs))
    }

    #[test]
    fn defaults_fill_in_and_types_are_checked() {
        let p = decode(&[("req", Value::Int(-3))]).unwrap();
        assert_eq!(
            (p.n, p.gain, p.name.as_str(), p.on, p.req),
            (4, 1.0, "x", false, -3)
        );
        let p = decode(&[
            ("req", 1.into()),
            ("gain", Value::Int(2)),
            ("on", true.into()),
            ("name", "y".into()),
        ])
        .unwrap();
        assert_eq!((p.gain, p.on, p.name.as_str()), (2.0, true, "y"));

        let e = decode(&[]).unwrap_err();
        assert_eq!(e.message(), "param \"req\": is required");
        assert_eq!(e.kind(), crate::ErrorKind::InvalidParam);
        let e = decode(&[("req", 1.into()), ("n", Value::Float(1.5))]).unwrap_err();
        assert_eq!(
            e.message(),
            "param \"n\": expected an integer, got float 1.5"
        );
        let e = decode(&[("req", 1.into()), ("n", Value::Int(-1))]).unwrap_err();
        assert_eq!(e.message(), "param \"n\": -1 does not fit in u32");
        let e = decode(&[("req", 1.into()), ("on", "yes".into())]).unwrap_err();
        assert_eq!(
            e.message(),
            "param \"on\": expected a boolean, got string \"yes\""
        );
        let e = decode(&[("req", 1.into()), ("gain", true.into())]).unwrap_err();
        assert!(e.message().contains("expected a number"), "{e}");
    }

    #[test]
    fn specs_go_on_the_wire() {
        let specs: Vec<pb::ParamSpec> = P::specs().iter().map(ParamSpec::to_proto).collect();
        assert_eq!(specs[0].name, "n");
        assert_eq!(specs[0].r#type, pb::ParamType::Int as i32);
        assert_eq!(specs[0].doc, "count");
        assert_eq!(specs[1].default, Some(Value::Float(1.0).to_proto()));
        assert_eq!(specs[4].default, None, "no default: required");
        assert_eq!(
            Value::from_proto(&specs[2].default.clone().unwrap()),
            Some(Value::String("x".into()))
        );
    }

    #[test]
    #[should_panic(expected = "its default is string")]
    fn a_default_of_the_wrong_type_is_a_programming_error() {
        let _ = ParamSpec::int("n").default("four");
    }

    crate::params! {
        /// Written once: name, type, default and doc of each parameter.
        #[derive(Debug)]
        struct M {
            /// Blend factor,
            /// 0..1.
            strength: f64 = 0.5,
            passes: u32 = 2,
            scale: f32 = 1,
            /// Required.
            label: String,
            on: bool = true,
        }
    }

    #[test]
    fn the_macro_declares_and_decodes_each_name_once() {
        let specs = M::specs();
        let names: Vec<&str> = specs.iter().map(ParamSpec::name).collect();
        assert_eq!(names, ["strength", "passes", "scale", "label", "on"]);
        let types: Vec<ParamType> = specs.iter().map(ParamSpec::param_type).collect();
        use ParamType::*;
        assert_eq!(types, [Float, Int, Float, String, Bool]);
        assert_eq!(specs[0].default_value(), Some(&Value::Float(0.5)));
        assert_eq!(specs[2].default_value(), Some(&Value::Float(1.0)));
        assert_eq!(specs[3].default_value(), None);
        assert_eq!(specs[0].to_proto().doc, "Blend factor, 0..1.");
        assert_eq!(specs[1].to_proto().doc, "");

        let vals = values(&[("label", "x".into()), ("passes", 5.into())]);
        let m = M::decode(&ParamValues::new(&vals, &specs)).unwrap();
        assert_eq!(
            (m.strength, m.passes, m.scale, m.label.as_str(), m.on),
            (0.5, 5, 1.0, "x", true)
        );
        let vals = values(&[]);
        let e = M::decode(&ParamValues::new(&vals, &specs)).unwrap_err();
        assert_eq!(e.message(), "param \"label\": is required");
        let vals = values(&[("label", "x".into()), ("passes", Value::Int(-2))]);
        let e = M::decode(&ParamValues::new(&vals, &specs)).unwrap_err();
        assert_eq!(e.message(), "param \"passes\": -2 does not fit in u32");
    }

    #[test]
    fn undeclared_params_are_refused() {
        let specs = P::specs();
        let vals = values(&[]);
        let e = ParamValues::new(&vals, &specs)
            .get::<i64>("other")
            .unwrap_err();
        assert!(e.message().contains("not declared"), "{e}");
    }
}
