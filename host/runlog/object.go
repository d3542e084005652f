package runlog

import (
	"maps"
	"slices"
	"strconv"
)

// Object is a record's "data" encoded by hand, for the records written for
// every stage: encoding/json's reflection and map-key sorting cost more
// than the rest of such a record. Members appear in the order they are
// added; a caller that adds them sorted by key writes what json.Marshal
// writes for the same map.
//
// The zero Object builds its members in a buffer of its own; Open builds
// the whole object, braces included, at the end of a buffer the caller
// already has, which saves the copy when many objects go into one file.
type Object struct {
	b     []byte
	start int // where the members begin in b
}

// Open starts an object at the end of b; Close ends it and returns b with
// the object appended.
func Open(b []byte) Object {
	b = append(b, '{')
	return Object{b: b, start: len(b)}
}

// Close appends the closing brace of an object from Open and returns the
// buffer.
func (o *Object) Close() []byte { return append(o.b, '}') }

// Begin adds a member k whose value is an object built in the returned
// Object, in o's buffer; End(sub) finishes it. Nothing may be added to o
// in between.
func (o *Object) Begin(k string) Object {
	o.key(k)
	return Open(o.b)
}

// End finishes a member started with Begin.
func (o *Object) End(sub *Object) { o.b = sub.Close() }

func (o *Object) key(k string) {
	if len(o.b) > o.start {
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

// Float adds a number; NaN and infinities, which JSON has no words for,
// become null.
func (o *Object) Float(k string, v float64) { o.key(k); o.b = appendFloat(o.b, v) }

// Null adds a member whose value is null.
func (o *Object) Null(k string) { o.key(k); o.b = append(o.b, "null"...) }

// Bool adds a boolean member.
func (o *Object) Bool(k string, v bool) { o.key(k); o.b = strconv.AppendBool(o.b, v) }

// Object adds a nested object.
func (o *Object) Object(k string, v *Object) { o.key(k); o.b = v.appendJSON(o.b) }

// Floats adds an object of numbers with sorted keys; NaN and infinities,
// which JSON has no words for, become null.
func (o *Object) Floats(k string, m map[string]float64) {
	sub := o.Begin(k)
	for _, name := range slices.Sorted(maps.Keys(m)) {
		sub.Float(name, m[name])
	}
	o.End(&sub)
}

func (o *Object) appendJSON(b []byte) []byte {
	b = append(b, '{')
	b = append(b, o.b...)
	return append(b, '}')
}
