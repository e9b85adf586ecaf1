package query

import (
	"bytes"

	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// lazyObject is a stored JSON object that decodes only the fields user
// code reads: v.region in a filter scans the bytes for "region" and decodes
// that value alone. Anything else (iteration, mutation, printing, methods
// other than get) decodes the whole object once and delegates to it, so it
// behaves exactly like an object. It belongs to one task's thread.
type lazyObject struct {
	raw  []byte // a complete JSON object, already validated
	full *object
}

var (
	_ starlark.IterableMapping = (*lazyObject)(nil)
	_ starlark.HasSetKey       = (*lazyObject)(nil)
	_ starlark.HasSetField     = (*lazyObject)(nil)
	_ starlark.Comparable      = (*lazyObject)(nil)
	_ starlark.Sequence        = (*lazyObject)(nil)
)

// decodeStored turns a stored value into Starlark: its JSON value if it is
// JSON (objects lazily), else the bytes as a string.
func decodeStored(b []byte) starlark.Value {
	check := jsonDecoder{b: b, skip: true}
	check.skipWS()
	if check.i < len(b) && b[check.i] == '{' {
		if _, ok := check.value(0); ok {
			check.skipWS()
			if check.i == len(b) {
				return &lazyObject{raw: b}
			}
		}
		return starlark.String(b)
	}
	if v, ok := parseJSON(b); ok {
		return v
	}
	return starlark.String(b)
}

func (o *lazyObject) obj() *object {
	if o.full == nil {
		v, ok := parseJSON(o.raw)
		if !ok { // cannot happen: raw was validated with the same grammar
			panic("query: lazy object does not decode")
		}
		o.full = v.(*object)
	}
	return o.full
}

// asObject unwraps the two object representations.
func asObject(v starlark.Value) *object {
	switch v := v.(type) {
	case *object:
		return v
	case *lazyObject:
		return v.obj()
	}
	return nil
}

// field finds the value of a top-level key (the last one, as when
// decoding) and decodes only that.
func (o *lazyObject) field(name string) (starlark.Value, bool) {
	d := jsonDecoder{b: o.raw}
	d.skipWS()
	at, found := findField(o.raw, d.i, name)
	if !found {
		return nil, false
	}
	if c := o.raw[at]; c == '{' || c == '[' {
		// Mutable: hand out the one shared copy, so v.a.x = 1 sticks.
		v, found, _ := o.obj().Get(starlark.String(name))
		return v, found
	}
	vd := jsonDecoder{b: o.raw, i: at}
	v, _ := vd.value(1)
	return v, true
}

// findField returns the offset of the value of the last member called
// name in the valid JSON object that starts at b[at].
func findField(b []byte, at int, name string) (int, bool) {
	d := jsonDecoder{b: b, i: at + 1, skip: true}
	found := -1
	for {
		d.skipWS()
		if d.i >= len(d.b) || d.b[d.i] != '"' {
			break // the '}' of an empty object
		}
		keyStart := d.i + 1
		d.str()
		raw := d.b[keyStart : d.i-1]
		var match bool
		if bytes.IndexByte(raw, '\\') < 0 {
			match = string(raw) == name
		} else {
			k := jsonDecoder{b: d.b, i: keyStart - 1}
			s, _ := k.str()
			match = s == name
		}
		d.skipWS()
		d.i++ // :
		d.skipWS()
		if match {
			found = d.i
		}
		d.value(1)
		d.skipWS()
		if d.i >= len(d.b) || d.b[d.i] != ',' {
			break
		}
		d.i++
	}
	return found, found >= 0
}

func (o *lazyObject) String() string { return o.obj().String() }
func (o *lazyObject) Type() string   { return "object" }
func (o *lazyObject) Freeze()        { o.obj().Freeze() }
func (o *lazyObject) Hash() (uint32, error) {
	return o.obj().Hash()
}

func (o *lazyObject) Truth() starlark.Bool {
	if o.full != nil {
		return o.full.Truth()
	}
	d := jsonDecoder{b: o.raw}
	d.skipWS()
	d.i++
	d.skipWS()
	return d.i < len(d.b) && d.b[d.i] != '}'
}

func (o *lazyObject) Get(k starlark.Value) (starlark.Value, bool, error) {
	if s, ok := k.(starlark.String); ok && o.full == nil {
		v, found := o.field(string(s))
		return v, found, nil
	}
	return o.obj().Get(k)
}

func (o *lazyObject) Attr(name string) (starlark.Value, error) {
	if o.full != nil {
		return o.full.Attr(name)
	}
	if v, found := o.field(name); found {
		return v, nil
	}
	if name == "get" {
		return starlark.NewBuiltin("get", lazyGet).BindReceiver(o), nil
	}
	return o.obj().Attr(name)
}

// lazyGet is dict.get for a lazy object, without decoding all of it.
func lazyGet(_ *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kwargs []starlark.Tuple) (starlark.Value, error) {
	var key, dflt starlark.Value = nil, starlark.None
	if err := starlark.UnpackPositionalArgs(b.Name(), args, kwargs, 1, &key, &dflt); err != nil {
		return nil, err
	}
	v, found, err := b.Receiver().(*lazyObject).Get(key)
	if err != nil {
		return nil, err
	}
	if !found {
		return dflt, nil
	}
	return v, nil
}

func (o *lazyObject) AttrNames() []string                          { return o.obj().AttrNames() }
func (o *lazyObject) SetField(name string, v starlark.Value) error { return o.obj().SetField(name, v) }
func (o *lazyObject) SetKey(k, v starlark.Value) error             { return o.obj().SetKey(k, v) }
func (o *lazyObject) Iterate() starlark.Iterator                   { return o.obj().Iterate() }
func (o *lazyObject) Items() []starlark.Tuple                      { return o.obj().Items() }
func (o *lazyObject) Len() int                                     { return o.obj().Len() }

func (o *lazyObject) CompareSameType(op syntax.Token, y starlark.Value, depth int) (bool, error) {
	return o.obj().CompareSameType(op, y, depth)
}
