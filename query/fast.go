package query

import (
	"bytes"
	"math/big"
	"slices"

	"go.starlark.net/syntax"
)

// The fast path evaluates the most common filter and aggregate shapes in
// Go, straight off the stored bytes, without calling Starlark:
//
//	k   v   v.a.b   v["a"]   literals   == != < <= > >=   and or not
//
// It only ever answers when the answer is certain to be what Starlark
// would compute; on anything unusual (a missing field, a nested object, a
// big int, an ordered comparison Starlark would reject) it gives up and
// the record goes through Starlark, which then also produces the error.

type fastKind uint8

const (
	fastPath fastKind = iota // k, or v followed by field names
	fastLit
	fastCmp
	fastAnd
	fastOr
	fastNot
)

type fastExpr struct {
	kind fastKind
	isK  bool
	path []string
	lit  any // nil, bool, int64, float64, string
	op   syntax.Token
	x, y *fastExpr
}

// compileFast returns the fast form of e, or nil if it has none.
func compileFast(e syntax.Expr) *fastExpr {
	switch e := e.(type) {
	case *syntax.ParenExpr:
		return compileFast(e.X)
	case *syntax.Ident:
		switch e.Name {
		case "k":
			return &fastExpr{kind: fastPath, isK: true}
		case "v":
			return &fastExpr{kind: fastPath}
		case "True":
			return &fastExpr{kind: fastLit, lit: true}
		case "False":
			return &fastExpr{kind: fastLit, lit: false}
		case "None":
			return &fastExpr{kind: fastLit, lit: nil}
		}
	case *syntax.Literal:
		switch x := e.Value.(type) {
		case string:
			if e.Token == syntax.STRING {
				return &fastExpr{kind: fastLit, lit: x}
			}
		case int64:
			return &fastExpr{kind: fastLit, lit: x}
		case float64:
			return &fastExpr{kind: fastLit, lit: x}
		}
	case *syntax.DotExpr:
		if x := compileFast(e.X); x != nil && x.kind == fastPath && !x.isK {
			return &fastExpr{kind: fastPath, path: append(slices.Clone(x.path), e.Name.Name)}
		}
	case *syntax.IndexExpr:
		lit, ok := e.Y.(*syntax.Literal)
		if !ok || lit.Token != syntax.STRING {
			return nil
		}
		if x := compileFast(e.X); x != nil && x.kind == fastPath && !x.isK {
			return &fastExpr{kind: fastPath, path: append(slices.Clone(x.path), lit.Value.(string))}
		}
	case *syntax.BinaryExpr:
		x, y := compileFast(e.X), compileFast(e.Y)
		if x == nil || y == nil {
			return nil
		}
		switch e.Op {
		case syntax.EQL, syntax.NEQ, syntax.LT, syntax.LE, syntax.GT, syntax.GE:
			if x.isLeaf() && y.isLeaf() {
				return &fastExpr{kind: fastCmp, op: e.Op, x: x, y: y}
			}
		case syntax.AND:
			return &fastExpr{kind: fastAnd, x: x, y: y}
		case syntax.OR:
			return &fastExpr{kind: fastOr, x: x, y: y}
		}
	case *syntax.UnaryExpr:
		if e.Op == syntax.NOT {
			if x := compileFast(e.X); x != nil {
				return &fastExpr{kind: fastNot, x: x}
			}
		}
	}
	return nil
}

func (e *fastExpr) isLeaf() bool { return e.kind == fastPath || e.kind == fastLit }

// fastRec is one record as the fast path sees it.
type fastRec struct {
	key, raw []byte
	state    int8     // 0 not yet checked, 1 JSON, 2 not JSON (v is a string)
	start    int      // first non-blank byte of raw
	top      []member // top-level members when raw is an object
	buf      *[]member
}

// member is a top-level member of a stored object.
type member struct {
	key []byte // raw, between the quotes
	at  int    // offset of the value
}

func (r *fastRec) isJSON() bool {
	if r.state == 0 {
		d := jsonDecoder{b: r.raw, skip: true}
		d.skipWS()
		r.start = d.i
		var ok bool
		if d.i < len(d.b) && d.b[d.i] == '{' {
			r.top, ok = indexObject(&d, (*r.buf)[:0])
			*r.buf = r.top
		} else {
			_, ok = d.value(0)
		}
		d.skipWS()
		if ok && d.i == len(d.b) {
			r.state = 1
		} else {
			r.state = 2
		}
	}
	return r.state == 1
}

// indexObject checks the object at d.i exactly as jsonDecoder.object does
// in skip mode, noting where each member's value starts.
func indexObject(d *jsonDecoder, top []member) ([]member, bool) {
	d.i++ // {
	d.skipWS()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		return top, true
	}
	for {
		d.skipWS()
		if d.i >= len(d.b) || d.b[d.i] != '"' {
			return top, false
		}
		keyStart := d.i + 1
		if _, ok := d.str(); !ok {
			return top, false
		}
		key := d.b[keyStart : d.i-1]
		d.skipWS()
		if d.i >= len(d.b) || d.b[d.i] != ':' {
			return top, false
		}
		d.i++
		d.skipWS()
		top = append(top, member{key: key, at: d.i})
		if _, ok := d.value(1); !ok {
			return top, false
		}
		d.skipWS()
		if d.i >= len(d.b) {
			return top, false
		}
		switch d.b[d.i] {
		case ',':
			d.i++
		case '}':
			d.i++
			return top, true
		default:
			return top, false
		}
	}
}

// topField finds a top-level member (the last of that name).
func (r *fastRec) topField(name string) (int, bool) {
	for i := len(r.top) - 1; i >= 0; i-- {
		k := r.top[i].key
		if bytes.IndexByte(k, '\\') < 0 {
			if string(k) == name {
				return r.top[i].at, true
			}
			continue
		}
		if s, ok := unescapeKey(k); ok && s == name {
			return r.top[i].at, true
		}
	}
	return 0, false
}

func unescapeKey(raw []byte) (string, bool) {
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	d := jsonDecoder{b: q}
	return d.str()
}

// value evaluates a leaf to nil, bool, int64, float64 or string.
func (r *fastRec) value(e *fastExpr) (any, bool) {
	if e.kind == fastLit {
		return e.lit, true
	}
	if e.kind != fastPath {
		return nil, false
	}
	if e.isK {
		return string(r.key), true
	}
	if !r.isJSON() {
		if len(e.path) == 0 {
			return string(r.raw), true
		}
		return nil, false
	}
	at := r.start
	for i, name := range e.path {
		if r.raw[at] != '{' {
			return nil, false
		}
		var found bool
		if i == 0 {
			at, found = r.topField(name)
		} else {
			at, found = findField(r.raw, at, name)
		}
		if !found {
			return nil, false
		}
	}
	return scalarAt(r.raw, at)
}

func scalarAt(b []byte, at int) (any, bool) {
	d := jsonDecoder{b: b, i: at}
	switch c := b[at]; {
	case c == '"':
		return d.str()
	case c == 't':
		return true, true
	case c == 'f':
		return false, true
	case c == 'n':
		return nil, true
	case c == '-' || (c >= '0' && c <= '9'):
		x, ok := d.scanNumber()
		if _, isBig := x.(*big.Int); isBig {
			return nil, false
		}
		return x, ok
	}
	return nil, false // an object or a list
}

// truth evaluates e as a condition.
func (r *fastRec) truth(e *fastExpr) (bool, bool) {
	switch e.kind {
	case fastAnd, fastOr:
		a, ok := r.truth(e.x)
		if !ok {
			return false, false
		}
		if a == (e.kind == fastOr) {
			return a, true
		}
		return r.truth(e.y)
	case fastNot:
		a, ok := r.truth(e.x)
		return !a, ok
	case fastCmp:
		a, ok := r.value(e.x)
		if !ok {
			return false, false
		}
		b, ok := r.value(e.y)
		if !ok {
			return false, false
		}
		return compareFast(e.op, a, b)
	}
	x, ok := r.value(e)
	if !ok {
		return false, false
	}
	switch x := x.(type) {
	case nil:
		return false, true
	case bool:
		return x, true
	case int64:
		return x != 0, true
	case float64:
		return x != 0, true
	case string:
		return x != "", true
	}
	return false, false
}

// compareFast compares as Starlark does: equality across types is false
// (ints and floats compare exactly); ordering needs two numbers or two
// strings (anything else would be a Starlark error: not ours to report).
func compareFast(op syntax.Token, a, b any) (bool, bool) {
	_, an := a.(int64)
	_, af := a.(float64)
	_, bn := b.(int64)
	_, bf := b.(float64)
	numeric := (an || af) && (bn || bf)
	_, as := a.(string)
	_, bs := b.(string)
	if op == syntax.EQL || op == syntax.NEQ {
		var eq bool
		if numeric {
			c, _ := compareScalars(a, b)
			eq = c == 0
		} else {
			eq = a == b // nil, bool, string; different types are unequal
		}
		return eq == (op == syntax.EQL), true
	}
	if !numeric && !(as && bs) {
		return false, false
	}
	c, _ := compareScalars(a, b)
	switch op {
	case syntax.LT:
		return c < 0, true
	case syntax.LE:
		return c <= 0, true
	case syntax.GT:
		return c > 0, true
	case syntax.GE:
		return c >= 0, true
	}
	return false, false
}
