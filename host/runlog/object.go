package runlog

import (
	"sort"
	"strconv"
)

// Object is a record's "data" encoded by hand, for the records written for
// every stage: encoding/json's reflection and map-key sorting cost more
// than the rest of such a record. Members appear in the order they are
// added; a caller that adds them sorted by key writes what json.Marshal
// writes for the same map.
type Object struct{ b []byte }

func (o *Object) key(k string) {
	if len(o.b) > 0 {
		o.b = append(o.b, ',')
	}
	o.b = append(appendString(o.b, k), ':')
}

// String adds a string member.
func (o *Object) String(k, v string) { o.key(k); o.b = appendString(o.b, v) }

// Int adds an integer member.
func (o *Object) Int(k string, v int64) { o.key(k); o.b = strconv.AppendInt(o.b, v, 10) }

// Uint adds an unsigned integer member.
func (o *Object) Uint(k string, v uint64) { o.key(k); o.b = strconv.AppendUint(o.b, v, 10) }

// Bool adds a boolean member.
func (o *Object) Bool(k string, v bool) { o.key(k); o.b = strconv.AppendBool(o.b, v) }

// Object adds a nested object.
func (o *Object) Object(k string, v *Object) { o.key(k); o.b = v.appendJSON(o.b) }

// Floats adds an object of numbers with sorted keys; NaN and infinities,
// which JSON has no words for, become null.
func (o *Object) Floats(k string, m map[string]float64) {
	keys := make([]string, 0, len(m))
	for name := range m {
		keys = append(keys, name)
	}
	sort.Strings(keys)
	var sub Object
	for _, name := range keys {
		sub.key(name)
		sub.b = appendFloat(sub.b, m[name])
	}
	o.Object(k, &sub)
}

func (o *Object) appendJSON(b []byte) []byte {
	b = append(b, '{')
	b = append(b, o.b...)
	return append(b, '}')
}
