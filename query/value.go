package query

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"go.starlark.net/starlark"
	"go.starlark.net/syntax"
)

// Values cross three forms:
//
//   - stored bytes: JSON (or anything else, which scripts see as a string);
//   - Starlark values, while user code runs;
//   - Go values (nil, bool, int64, float64, string, []any, map[string]any),
//     in partials and results.
//
// Integers are int64 in Go on every arch (never Go int), and arbitrary
// precision in Starlark; a Starlark int that does not fit in 64 bits is an
// error when it leaves Starlark. Floats must be finite (JSON has no NaN).

const (
	maxJSONDepth  = 256 // nesting accepted when decoding stored JSON
	maxValueDepth = 64  // nesting accepted when converting values and in partials
)

// object is a decoded JSON object: a dict that also answers attribute
// access, so filters read v.region as well as v["region"]. A field shadows
// a dict method of the same name (v.keys is the field "keys" if there is
// one); dict(v) gives a plain dict. Its type is "object", not "dict",
// because starlark.Dict's comparison assumes both operands are *Dict.
type object struct{ *starlark.Dict }

var (
	_ starlark.IterableMapping = (*object)(nil)
	_ starlark.HasSetKey       = (*object)(nil)
	_ starlark.HasSetField     = (*object)(nil)
	_ starlark.Comparable      = (*object)(nil)
	_ starlark.Sequence        = (*object)(nil)
)

func newObject(n int) *object { return &object{starlark.NewDict(n)} }

func (o *object) Type() string { return "object" }

func (o *object) Attr(name string) (starlark.Value, error) {
	if v, found, _ := o.Dict.Get(starlark.String(name)); found {
		return v, nil
	}
	return o.Dict.Attr(name)
}

func (o *object) AttrNames() []string {
	names := append([]string(nil), o.Dict.AttrNames()...)
	for _, k := range o.Dict.Keys() {
		if s, ok := k.(starlark.String); ok {
			names = append(names, string(s))
		}
	}
	sort.Strings(names)
	return names
}

func (o *object) SetField(name string, v starlark.Value) error {
	return o.Dict.SetKey(starlark.String(name), v)
}

func (o *object) CompareSameType(op syntax.Token, y starlark.Value, depth int) (bool, error) {
	return o.Dict.CompareSameType(op, asObject(y).Dict, depth)
}

// parseJSON decodes one JSON document (strictly: trailing bytes fail).
// Integral numbers become ints (arbitrary precision), others floats;
// objects keep their key order.
func parseJSON(b []byte) (starlark.Value, bool) {
	d := jsonDecoder{b: b}
	d.skipWS()
	v, ok := d.value(0)
	if !ok {
		return nil, false
	}
	d.skipWS()
	return v, d.i == len(d.b)
}

// jsonDecoder parses JSON into Starlark values, or with skip set only
// checks it (without allocating): both modes accept exactly the same input.
type jsonDecoder struct {
	b    []byte
	i    int
	skip bool
}

func (d *jsonDecoder) skipWS() {
	b, i := d.b, d.i
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	d.i = i
}

func (d *jsonDecoder) value(depth int) (starlark.Value, bool) {
	if d.i >= len(d.b) || depth > maxJSONDepth {
		return nil, false
	}
	switch c := d.b[d.i]; {
	case c == '{':
		return d.object(depth)
	case c == '[':
		return d.array(depth)
	case c == '"':
		s, ok := d.str()
		return starlark.String(s), ok
	case c == 't':
		return d.literal("true", starlark.True)
	case c == 'f':
		return d.literal("false", starlark.False)
	case c == 'n':
		return d.literal("null", starlark.None)
	case c == '-' || (c >= '0' && c <= '9'):
		return d.number()
	}
	return nil, false
}

func (d *jsonDecoder) literal(word string, v starlark.Value) (starlark.Value, bool) {
	if len(d.b)-d.i < len(word) || string(d.b[d.i:d.i+len(word)]) != word {
		return nil, false
	}
	d.i += len(word)
	return v, true
}

func (d *jsonDecoder) object(depth int) (starlark.Value, bool) {
	d.i++ // {
	var obj *object
	if !d.skip {
		obj = newObject(0)
	}
	d.skipWS()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		return obj, true
	}
	for {
		d.skipWS()
		if d.i >= len(d.b) || d.b[d.i] != '"' {
			return nil, false
		}
		k, ok := d.str()
		if !ok {
			return nil, false
		}
		d.skipWS()
		if d.i >= len(d.b) || d.b[d.i] != ':' {
			return nil, false
		}
		d.i++
		d.skipWS()
		v, ok := d.value(depth + 1)
		if !ok {
			return nil, false
		}
		if !d.skip {
			if err := obj.SetKey(starlark.String(k), v); err != nil {
				return nil, false
			}
		}
		d.skipWS()
		if d.i >= len(d.b) {
			return nil, false
		}
		switch d.b[d.i] {
		case ',':
			d.i++
		case '}':
			d.i++
			return obj, true
		default:
			return nil, false
		}
	}
}

func (d *jsonDecoder) array(depth int) (starlark.Value, bool) {
	d.i++ // [
	var elems []starlark.Value
	d.skipWS()
	if d.i < len(d.b) && d.b[d.i] == ']' {
		d.i++
		return starlark.NewList(elems), true
	}
	for {
		d.skipWS()
		v, ok := d.value(depth + 1)
		if !ok {
			return nil, false
		}
		if !d.skip {
			elems = append(elems, v)
		}
		d.skipWS()
		if d.i >= len(d.b) {
			return nil, false
		}
		switch d.b[d.i] {
		case ',':
			d.i++
		case ']':
			d.i++
			return starlark.NewList(elems), true
		default:
			return nil, false
		}
	}
}

// str decodes a JSON string starting at the opening quote. Lone surrogates
// become U+FFFD, as in encoding/json.
func (d *jsonDecoder) str() (string, bool) {
	d.i++ // "
	start := d.i
	b, i := d.b, d.i
	for i < len(b) {
		c := b[i]
		if c == '"' {
			var s string
			if !d.skip {
				s = string(b[start:i])
			}
			d.i = i + 1
			return s, true
		}
		if c == '\\' {
			break
		}
		if c < 0x20 {
			return "", false
		}
		i++
	}
	d.i = i
	var buf []byte
	if !d.skip {
		buf = append(buf, d.b[start:d.i]...)
	}
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			d.i++
			if d.skip {
				return "", true
			}
			return string(buf), true
		case c < 0x20:
			return "", false
		case c != '\\':
			if !d.skip {
				buf = append(buf, c)
			}
			d.i++
			continue
		}
		d.i++ // backslash
		if d.i >= len(d.b) {
			return "", false
		}
		e := d.b[d.i]
		d.i++
		switch e {
		case '"', '\\', '/':
			buf = append(buf, e)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := d.hex4()
			if !ok {
				return "", false
			}
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if d.i+1 < len(d.b) && d.b[d.i] == '\\' && d.b[d.i+1] == 'u' {
					save := d.i
					d.i += 2
					if x, ok := d.hex4(); ok {
						r2 = x
					} else {
						return "", false
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						r = dec
					} else {
						d.i = save // the second escape is decoded on its own
						r = utf8.RuneError
					}
				} else {
					r = utf8.RuneError
				}
			}
			if !d.skip {
				buf = utf8.AppendRune(buf, r)
			}
		default:
			return "", false
		}
		if d.skip {
			buf = buf[:0] // escapes append to buf above; keep it empty
		}
	}
	return "", false
}

func (d *jsonDecoder) hex4() (rune, bool) {
	if len(d.b)-d.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range d.b[d.i : d.i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	d.i += 4
	return r, true
}

func (d *jsonDecoder) number() (starlark.Value, bool) {
	x, ok := d.scanNumber()
	if !ok || d.skip {
		return nil, ok
	}
	switch x := x.(type) {
	case int64:
		return starlark.MakeInt64(x), true
	case *big.Int:
		return starlark.MakeBigInt(x), true
	}
	return starlark.Float(x.(float64)), true
}

// scanNumber parses a JSON number: integral ones into an int64 (or a
// *big.Int beyond int64), others into a float64; nil in skip mode.
func (d *jsonDecoder) scanNumber() (any, bool) {
	start := d.i
	neg := false
	if d.b[d.i] == '-' {
		neg = true
		d.i++
	}
	digits := d.i
	switch {
	case d.i < len(d.b) && d.b[d.i] == '0':
		d.i++
	case d.i < len(d.b) && d.b[d.i] >= '1' && d.b[d.i] <= '9':
		for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
			d.i++
		}
	default:
		return nil, false
	}
	intEnd := d.i
	integral, exponent := true, false
	if d.i < len(d.b) && d.b[d.i] == '.' {
		integral = false
		d.i++
		if !d.digits() {
			return nil, false
		}
	}
	if d.i < len(d.b) && (d.b[d.i] == 'e' || d.b[d.i] == 'E') {
		integral, exponent = false, true
		d.i++
		if d.i < len(d.b) && (d.b[d.i] == '+' || d.b[d.i] == '-') {
			d.i++
		}
		if !d.digits() {
			return nil, false
		}
	}
	if d.skip {
		if integral || (!exponent && intEnd-digits <= 300) {
			return nil, true // cannot overflow a float64
		}
		_, err := strconv.ParseFloat(string(d.b[start:d.i]), 64)
		return nil, err == nil
	}
	if integral {
		if intEnd-digits <= 18 { // fits in int64 without overflow checks
			var n int64
			for _, c := range d.b[digits:intEnd] {
				n = n*10 + int64(c-'0')
			}
			if neg {
				n = -n
			}
			return n, true
		}
		z, ok := new(big.Int).SetString(string(d.b[start:intEnd]), 10)
		if !ok {
			return nil, false
		}
		if z.IsInt64() {
			return z.Int64(), true
		}
		return z, true
	}
	f, err := strconv.ParseFloat(string(d.b[start:d.i]), 64)
	if err != nil { // out of range: not something we can represent
		return nil, false
	}
	return f, true
}

func (d *jsonDecoder) digits() bool {
	s := d.i
	for d.i < len(d.b) && d.b[d.i] >= '0' && d.b[d.i] <= '9' {
		d.i++
	}
	return d.i > s
}

// toGo converts a Starlark value into a JSON-able Go value.
func toGo(v starlark.Value) (any, error) { return toGoDepth(v, 0) }

func toGoDepth(v starlark.Value, depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, fmt.Errorf("value nested deeper than %d levels", maxValueDepth)
	}
	switch v := v.(type) {
	case starlark.NoneType:
		return nil, nil
	case starlark.Bool:
		return bool(v), nil
	case starlark.Int:
		return int64Of(v)
	case starlark.Float:
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("float %v is not JSON-able", f)
		}
		return f, nil
	case starlark.String:
		return string(v), nil
	case *starlark.List:
		out := make([]any, v.Len())
		for i := range out {
			x, err := toGoDepth(v.Index(i), depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = x
		}
		return out, nil
	case starlark.Tuple:
		out := make([]any, len(v))
		for i, e := range v {
			x, err := toGoDepth(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = x
		}
		return out, nil
	case *object:
		return dictToGo(v.Dict, depth)
	case *lazyObject:
		return dictToGo(v.obj().Dict, depth)
	case *starlark.Dict:
		return dictToGo(v, depth)
	}
	return nil, fmt.Errorf("a %s is not JSON-able", v.Type())
}

func dictToGo(d *starlark.Dict, depth int) (any, error) {
	out := make(map[string]any, d.Len())
	for k, v := range d.Entries() {
		ks, ok := k.(starlark.String)
		if !ok {
			return nil, fmt.Errorf("dict key %s is a %s; JSON keys are strings", k, k.Type())
		}
		x, err := toGoDepth(v, depth+1)
		if err != nil {
			return nil, err
		}
		out[string(ks)] = x
	}
	return out, nil
}

// int64Of converts a Starlark int, failing when it needs more than 64 bits.
func int64Of(i starlark.Int) (int64, error) {
	n, ok := i.Int64()
	if !ok {
		return 0, fmt.Errorf("integer %s does not fit in 64 bits", i)
	}
	return n, nil
}

// toStarlark converts a Go value produced by toGo (or decoded from a
// partial) into Starlark. Object keys are inserted in sorted order so
// iteration is deterministic.
func toStarlark(x any) starlark.Value {
	switch x := x.(type) {
	case nil:
		return starlark.None
	case bool:
		return starlark.Bool(x)
	case int64:
		return starlark.MakeInt64(x)
	case float64:
		return starlark.Float(x)
	case string:
		return starlark.String(x)
	case []any:
		elems := make([]starlark.Value, len(x))
		for i, e := range x {
			elems[i] = toStarlark(e)
		}
		return starlark.NewList(elems)
	case map[string]any:
		obj := newObject(len(x))
		for _, k := range slices.Sorted(mapKeys(x)) {
			_ = obj.SetKey(starlark.String(k), toStarlark(x[k]))
		}
		return obj
	}
	panic(fmt.Sprintf("query: toStarlark: unexpected %T", x)) // internal invariant
}

func mapKeys(m map[string]any) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// normalizeGo brings a value emitted by a Go function to the canonical Go
// forms (int64 for every integer type, float64 for floats, []any,
// map[string]any). Anything else goes through encoding/json.
func normalizeGo(x any) (any, error) { return normalizeGoDepth(x, 0) }

func normalizeGoDepth(x any, depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, fmt.Errorf("value nested deeper than %d levels", maxValueDepth)
	}
	switch x := x.(type) {
	case nil, bool, string, int64:
		return x, nil
	case int:
		return int64(x), nil
	case int8:
		return int64(x), nil
	case int16:
		return int64(x), nil
	case int32:
		return int64(x), nil
	case uint8:
		return int64(x), nil
	case uint16:
		return int64(x), nil
	case uint32:
		return int64(x), nil
	case uint:
		if uint64(x) > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d does not fit in int64", x)
		}
		return int64(x), nil
	case uint64:
		if x > math.MaxInt64 {
			return nil, fmt.Errorf("integer %d does not fit in int64", x)
		}
		return int64(x), nil
	case float32:
		return normalizeGoDepth(float64(x), depth)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil, fmt.Errorf("float %v is not JSON-able", x)
		}
		return x, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			n, err := normalizeGoDepth(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = n
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			n, err := normalizeGoDepth(e, depth+1)
			if err != nil {
				return nil, err
			}
			out[k] = n
		}
		return out, nil
	}
	if rv := reflect.ValueOf(x); rv.Kind() == reflect.Pointer && rv.IsNil() {
		return nil, nil
	}
	b, err := json.Marshal(x)
	if err != nil {
		return nil, fmt.Errorf("value of type %T is not JSON-able: %w", x, err)
	}
	v, ok := parseJSON(b)
	if !ok {
		return nil, fmt.Errorf("value of type %T is not JSON-able", x)
	}
	return toGo(v)
}

// appendStarlarkJSON encodes a Starlark value as JSON, keeping dict order.
func appendStarlarkJSON(buf []byte, v starlark.Value, depth int) ([]byte, error) {
	if depth > maxValueDepth {
		return nil, fmt.Errorf("value nested deeper than %d levels", maxValueDepth)
	}
	switch v := v.(type) {
	case starlark.NoneType:
		return append(buf, "null"...), nil
	case starlark.Bool:
		return strconv.AppendBool(buf, bool(v)), nil
	case starlark.Int:
		n, err := int64Of(v)
		if err != nil {
			return nil, err
		}
		return strconv.AppendInt(buf, n, 10), nil
	case starlark.Float:
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("float %v is not JSON-able", f)
		}
		return appendJSONFloat(buf, f), nil
	case starlark.String:
		return appendJSONString(buf, string(v)), nil
	case *starlark.List, starlark.Tuple:
		seq := v.(starlark.Indexable)
		buf = append(buf, '[')
		for i := 0; i < seq.Len(); i++ {
			if i > 0 {
				buf = append(buf, ',')
			}
			var err error
			if buf, err = appendStarlarkJSON(buf, seq.Index(i), depth+1); err != nil {
				return nil, err
			}
		}
		return append(buf, ']'), nil
	case *object:
		return appendDictJSON(buf, v.Dict, depth)
	case *lazyObject:
		return appendDictJSON(buf, v.obj().Dict, depth)
	case *starlark.Dict:
		return appendDictJSON(buf, v, depth)
	}
	return nil, fmt.Errorf("a %s is not JSON-able", v.Type())
}

func appendDictJSON(buf []byte, d *starlark.Dict, depth int) ([]byte, error) {
	buf = append(buf, '{')
	first := true
	for k, v := range d.Entries() {
		ks, ok := k.(starlark.String)
		if !ok {
			return nil, fmt.Errorf("dict key %s is a %s; JSON keys are strings", k, k.Type())
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = appendJSONString(buf, string(ks))
		buf = append(buf, ':')
		var err error
		if buf, err = appendStarlarkJSON(buf, v, depth+1); err != nil {
			return nil, err
		}
	}
	return append(buf, '}'), nil
}

// appendJSONFloat formats like encoding/json.
func appendJSONFloat(buf []byte, f float64) []byte {
	format := byte('f')
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		format = 'e'
	}
	buf = strconv.AppendFloat(buf, f, format, -1, 64)
	if format == 'e' { // e-09 → e-9
		n := len(buf)
		if n >= 4 && buf[n-4] == 'e' && buf[n-3] == '-' && buf[n-2] == '0' {
			buf[n-2] = buf[n-1]
			buf = buf[:n-1]
		}
	}
	return buf
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s; invalid UTF-8 becomes U+FFFD.
func appendJSONString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				buf = append(buf, '\\', c)
			case c == '\n':
				buf = append(buf, '\\', 'n')
			case c == '\r':
				buf = append(buf, '\\', 'r')
			case c == '\t':
				buf = append(buf, '\\', 't')
			case c < 0x20:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}

// compareScalars orders two numbers (exactly, across int64 and float64) or
// two strings; anything else cannot be ordered.
func compareScalars(a, b any) (int, error) {
	switch a := a.(type) {
	case int64:
		switch b := b.(type) {
		case int64:
			return cmpInt(a, b), nil
		case float64:
			return cmpIntFloat(a, b), nil
		}
	case float64:
		switch b := b.(type) {
		case int64:
			return -cmpIntFloat(b, a), nil
		case float64:
			switch {
			case a < b:
				return -1, nil
			case a > b:
				return 1, nil
			}
			return 0, nil
		}
	case string:
		if b, ok := b.(string); ok {
			switch {
			case a < b:
				return -1, nil
			case a > b:
				return 1, nil
			}
			return 0, nil
		}
	}
	return 0, fmt.Errorf("cannot compare %s with %s", typeName(a), typeName(b))
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// cmpIntFloat compares exactly; f is finite.
func cmpIntFloat(i int64, f float64) int {
	if f < -(1 << 63) {
		return 1
	}
	if f >= 1<<63 {
		return -1
	}
	t := math.Trunc(f)
	if c := cmpInt(i, int64(t)); c != 0 {
		return c
	}
	switch {
	case f > t:
		return -1
	case f < t:
		return 1
	}
	return 0
}

// typeName names a Go value by its JSON/Starlark type, for messages.
func typeName(x any) string {
	switch x.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "string"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", x)
}
