package query

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
)

// kind is what a partial accumulates.
type kind uint8

const (
	kindCount kind = 1 + iota
	kindSum
	kindMin
	kindMax
	kindAvg
	kindDistinct
	kindTopK
	kindValues // emitted values per key: Starlark scripts and Go functions
	kindLast   = kindValues
)

func (k kind) String() string {
	switch k {
	case kindCount:
		return "count"
	case kindSum:
		return "sum"
	case kindMin:
		return "min"
	case kindMax:
		return "max"
	case kindAvg:
		return "avg"
	case kindDistinct:
		return "distinct"
	case kindTopK:
		return "topk"
	case kindValues:
		return "values"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// gkey is a group key: the by value or emit key. Ints stay ints so they
// sort numerically and reach reduce as ints.
type gkey struct {
	isInt bool
	i     int64
	s     string
}

func (k gkey) String() string {
	if k.isInt {
		return strconv.FormatInt(k.i, 10)
	}
	return k.s
}

// compareKeys orders int keys numerically before string keys bytewise.
func compareKeys(a, b gkey) int {
	switch {
	case a.isInt && b.isInt:
		return cmp.Compare(a.i, b.i)
	case a.isInt:
		return -1
	case b.isInt:
		return 1
	}
	return cmp.Compare(a.s, b.s)
}

// Partial is the combined result of one or more tasks, before Finalize.
// Partials are merged with Program.Merge and shipped with MarshalBinary.
type Partial struct {
	kind   kind
	k      int // topk's K
	groups map[gkey]*state
	size   int // estimated encoded size, for Limits.OutputBytes
}

// state is one group's accumulator; which fields are used depends on kind.
type state struct {
	n    int64               // count; avg: values seen
	sum  exactSum            // sum, avg
	val  any                 // min, max: best so far (int64, float64, string), nil if none
	set  map[string]struct{} // distinct: canonical encodings of the values
	top  []topEntry          // topk: at most k entries (a min-heap while a task runs)
	vals []any               // values: emitted (or combined) values
	vsz  int                 // values: estimated encoded size of vals
}

type topEntry struct {
	key string
	val any // int64, float64 or string
}

func newPartial(k kind, topK int) *Partial {
	return &Partial{kind: k, k: topK, groups: map[gkey]*state{}, size: 16}
}

// group returns the state for key, creating it.
func (p *Partial) group(key gkey) *state {
	g := p.groups[key]
	if g == nil {
		g = &state{}
		if p.kind == kindDistinct {
			g.set = map[string]struct{}{}
		}
		p.groups[key] = g
		p.size += len(key.s) + 24
	}
	return g
}

func (p *Partial) sortedKeys() []gkey {
	keys := make([]gkey, 0, len(p.groups))
	for k := range p.groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	return keys
}

// exactSum adds int64s and float64s exactly, so a sum does not depend on
// the order of additions (which differs with partitioning, merge order,
// retries and hedges). Ints are summed in int64, spilling into a big.Int on
// overflow; floats are summed as integer multiples of 2^-1074 (the smallest
// float64), which is exact. The result is rounded once, at the end.
type exactSum struct {
	i  int64
	ib *big.Int // ints beyond int64: the int part is i + ib
	f  *big.Int // floats ×2^1074; nil when no float was added
}

const floatShift = 1074

func (s *exactSum) addInt(x int64) {
	r := s.i + x
	if (x > 0 && r < s.i) || (x < 0 && r > s.i) {
		if s.ib == nil {
			s.ib = new(big.Int)
		}
		s.ib.Add(s.ib, big.NewInt(s.i))
		s.i = x
		return
	}
	s.i = r
}

// addFloat adds a finite float; tmp is scratch space.
func (s *exactSum) addFloat(x float64, tmp *big.Int) {
	b := math.Float64bits(x)
	e := int(b>>52) & 0x7ff
	m := b & (1<<52 - 1)
	if e == 0 {
		e = 1 // subnormal
	} else {
		m |= 1 << 52
	}
	// |x| = m × 2^(e-1075) = (m << (e-1)) × 2^-1074
	if s.f == nil {
		s.f = new(big.Int)
	}
	tmp.SetUint64(m).Lsh(tmp, uint(e-1))
	if b>>63 != 0 {
		s.f.Sub(s.f, tmp)
	} else {
		s.f.Add(s.f, tmp)
	}
}

func (s *exactSum) merge(o *exactSum) {
	s.addInt(o.i)
	if o.ib != nil {
		if s.ib == nil {
			s.ib = new(big.Int)
		}
		s.ib.Add(s.ib, o.ib)
	}
	if o.f != nil {
		if s.f == nil {
			s.f = new(big.Int)
		}
		s.f.Add(s.f, o.f)
	}
}

func (s *exactSum) intPart() *big.Int {
	z := big.NewInt(s.i)
	if s.ib != nil {
		z.Add(z, s.ib)
	}
	return z
}

// total is the exact sum as a fraction num / 2^1074 (or an integer).
func (s *exactSum) numerator() *big.Int {
	z := s.intPart()
	if s.f != nil {
		z.Lsh(z, floatShift)
		z.Add(z, s.f)
	}
	return z
}

// result is the sum: an int64 when only ints were added, else the float64
// nearest to the exact sum.
func (s *exactSum) result() (any, error) {
	if s.f == nil {
		z := s.intPart()
		if !z.IsInt64() {
			return nil, fmt.Errorf("sum %s does not fit in int64", z)
		}
		return z.Int64(), nil
	}
	den := new(big.Int).Lsh(big.NewInt(1), floatShift)
	f, _ := new(big.Rat).SetFrac(s.numerator(), den).Float64()
	if math.IsInf(f, 0) {
		return nil, errors.New("sum overflows float64")
	}
	return f, nil
}

// mean is the float64 nearest to sum/n, or nil when n is 0.
func (s *exactSum) mean(n int64) (any, error) {
	if n == 0 {
		return nil, nil
	}
	den := big.NewInt(n)
	if s.f != nil {
		den.Lsh(den, floatShift)
	}
	f, _ := new(big.Rat).SetFrac(s.numerator(), den).Float64()
	if math.IsInf(f, 0) {
		return nil, errors.New("avg overflows float64")
	}
	return f, nil
}

// Wire format (version 1). Integers are varints (zigzag when signed); the
// encoding of a given partial is deterministic (groups, set members and
// object keys sorted).
//
//	partial  = version:byte(1) kind:byte [K:uvarint if topk] ngroups:uvarint group*
//	group    = key state
//	key      = 0x00 len:uvarint bytes | 0x01 varint
//	state    = count:    n:uvarint
//	         | sum:      xsum
//	         | avg:      n:uvarint xsum
//	         | min, max: value (null when the group saw no value)
//	         | distinct: m:uvarint (len:uvarint value-bytes)*   canonical values, sorted
//	         | topk:     m:uvarint (len:uvarint key-bytes value)*   best first, m <= K
//	         | values:   m:uvarint value*
//	xsum     = flags:byte(bit0: big int part, bit1: floats) i:varint [bigint] [bigint]
//	bigint   = sign:byte(0|1) shift:uvarint len:uvarint magnitude-bytes   (±mag << shift)
//	value    = 0 null | 1 false | 2 true | 3 varint | 4 float64-LE | 5 len bytes
//	         | 6 n value* | 7 n (len key-bytes value)*
//
// A count without "by" is 7-8 bytes.
const partialVersion = 1

const (
	tagNull byte = iota
	tagFalse
	tagTrue
	tagInt
	tagFloat
	tagString
	tagList
	tagObject
)

// MarshalBinary encodes the partial for the wire.
func (p *Partial) MarshalBinary() ([]byte, error) {
	if p == nil {
		return nil, fmt.Errorf("%w: nil partial", ErrBadPartial)
	}
	buf := make([]byte, 0, min(p.size+16, 1<<20))
	buf = append(buf, partialVersion, byte(p.kind))
	if p.kind == kindTopK {
		buf = binary.AppendUvarint(buf, uint64(p.k))
	}
	buf = binary.AppendUvarint(buf, uint64(len(p.groups)))
	var scratch []string
	for _, key := range p.sortedKeys() {
		if key.isInt {
			buf = append(buf, 1)
			buf = binary.AppendVarint(buf, key.i)
		} else {
			buf = append(buf, 0)
			buf = appendBytes(buf, key.s)
		}
		g := p.groups[key]
		switch p.kind {
		case kindCount:
			buf = binary.AppendUvarint(buf, uint64(g.n))
		case kindSum:
			buf = appendSum(buf, &g.sum)
		case kindAvg:
			buf = binary.AppendUvarint(buf, uint64(g.n))
			buf = appendSum(buf, &g.sum)
		case kindMin, kindMax:
			buf = appendValue(buf, g.val, false)
		case kindDistinct:
			scratch = scratch[:0]
			for m := range g.set {
				scratch = append(scratch, m)
			}
			slices.Sort(scratch)
			buf = binary.AppendUvarint(buf, uint64(len(scratch)))
			for _, m := range scratch {
				buf = appendBytes(buf, m)
			}
		case kindTopK:
			top := sortedTop(g.top)
			buf = binary.AppendUvarint(buf, uint64(len(top)))
			for _, e := range top {
				buf = appendBytes(buf, e.key)
				buf = appendValue(buf, e.val, false)
			}
		case kindValues:
			buf = binary.AppendUvarint(buf, uint64(len(g.vals)))
			for _, v := range g.vals {
				buf = appendValue(buf, v, false)
			}
		}
	}
	return buf, nil
}

func appendBytes(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

func appendSum(buf []byte, s *exactSum) []byte {
	var flags byte
	if s.ib != nil {
		flags |= 1
	}
	if s.f != nil {
		flags |= 2
	}
	buf = append(buf, flags)
	buf = binary.AppendVarint(buf, s.i)
	if s.ib != nil {
		buf = appendBig(buf, s.ib)
	}
	if s.f != nil {
		buf = appendBig(buf, s.f)
	}
	return buf
}

// appendBig drops trailing zero bits: float sums are mostly zeros at the
// bottom of their 2^-1074 scale.
func appendBig(buf []byte, z *big.Int) []byte {
	var sign byte
	if z.Sign() < 0 {
		sign = 1
	}
	buf = append(buf, sign)
	if z.Sign() == 0 {
		return append(buf, 0, 0)
	}
	shift := z.TrailingZeroBits()
	mag := new(big.Int).Abs(z)
	mag.Rsh(mag, shift)
	b := mag.Bytes()
	buf = binary.AppendUvarint(buf, uint64(shift))
	return appendBytes(buf, string(b))
}

// appendValue encodes a Go value. canonical makes equal numbers encode
// equally (an integral float as the int), for distinct.
func appendValue(buf []byte, x any, canonical bool) []byte {
	switch x := x.(type) {
	case nil:
		return append(buf, tagNull)
	case bool:
		if x {
			return append(buf, tagTrue)
		}
		return append(buf, tagFalse)
	case int64:
		return binary.AppendVarint(append(buf, tagInt), x)
	case float64:
		if canonical && x == math.Trunc(x) && x >= -(1<<63) && x < 1<<63 {
			return binary.AppendVarint(append(buf, tagInt), int64(x))
		}
		return binary.LittleEndian.AppendUint64(append(buf, tagFloat), math.Float64bits(x))
	case string:
		return appendBytes(append(buf, tagString), x)
	case []any:
		buf = binary.AppendUvarint(append(buf, tagList), uint64(len(x)))
		for _, e := range x {
			buf = appendValue(buf, e, canonical)
		}
		return buf
	case map[string]any:
		buf = binary.AppendUvarint(append(buf, tagObject), uint64(len(x)))
		for _, k := range slices.Sorted(mapKeys(x)) {
			buf = appendBytes(buf, k)
			buf = appendValue(buf, x[k], canonical)
		}
		return buf
	}
	panic(fmt.Sprintf("query: appendValue: unexpected %T", x)) // internal invariant
}

// sizeOf is the encoded size of a Go value (an upper bound).
func sizeOf(x any) int {
	switch x := x.(type) {
	case nil, bool:
		return 1
	case int64:
		return 1 + binary.MaxVarintLen64
	case float64:
		return 9
	case string:
		return 1 + binary.MaxVarintLen64 + len(x)
	case []any:
		n := 1 + binary.MaxVarintLen64
		for _, e := range x {
			n += sizeOf(e)
		}
		return n
	case map[string]any:
		n := 1 + binary.MaxVarintLen64
		for k, e := range x {
			n += binary.MaxVarintLen64 + len(k) + sizeOf(e)
		}
		return n
	}
	return 16
}

// UnmarshalPartial decodes a partial strictly: anything malformed (bad
// version or kind, truncation, trailing bytes, duplicate groups or members,
// values of the wrong type, absurd lengths) is an error wrapping
// ErrBadPartial, never a panic.
func UnmarshalPartial(b []byte) (*Partial, error) {
	r := &reader{b: b}
	p, err := r.partial()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPartial, err)
	}
	return p, nil
}

type reader struct {
	b   []byte
	off int
}

var errTruncated = errors.New("truncated")

func (r *reader) byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, errTruncated
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

func (r *reader) uvarint() (uint64, error) {
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		if n == 0 {
			return 0, errTruncated
		}
		return 0, errors.New("varint overflows 64 bits")
	}
	r.off += n
	return v, nil
}

func (r *reader) varint() (int64, error) {
	v, n := binary.Varint(r.b[r.off:])
	if n <= 0 {
		if n == 0 {
			return 0, errTruncated
		}
		return 0, errors.New("varint overflows 64 bits")
	}
	r.off += n
	return v, nil
}

// count reads a length of items each taking at least minSize bytes, so a
// forged length cannot make us allocate more than the input justifies.
func (r *reader) count(minSize int) (int, error) {
	v, err := r.uvarint()
	if err != nil {
		return 0, err
	}
	if v > uint64(len(r.b)-r.off)/uint64(minSize) {
		return 0, fmt.Errorf("length %d exceeds the remaining %d bytes", v, len(r.b)-r.off)
	}
	return int(v), nil
}

func (r *reader) bytes() ([]byte, error) {
	n, err := r.count(1)
	if err != nil {
		return nil, err
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s, nil
}

func (r *reader) str() (string, error) {
	b, err := r.bytes()
	return string(b), err
}

func (r *reader) partial() (*Partial, error) {
	v, err := r.byte()
	if err != nil {
		return nil, err
	}
	if v != partialVersion {
		return nil, fmt.Errorf("version %d, want %d", v, partialVersion)
	}
	kb, err := r.byte()
	if err != nil {
		return nil, err
	}
	k := kind(kb)
	if k < kindCount || k > kindLast {
		return nil, fmt.Errorf("unknown kind %d", kb)
	}
	topK := 0
	if k == kindTopK {
		n, err := r.uvarint()
		if err != nil {
			return nil, err
		}
		if n < 1 || n > maxTopK {
			return nil, fmt.Errorf("topk K %d out of 1..%d", n, maxTopK)
		}
		topK = int(n)
	}
	p := newPartial(k, topK)
	ng, err := r.count(2)
	if err != nil {
		return nil, err
	}
	for range ng {
		var key gkey
		tag, err := r.byte()
		if err != nil {
			return nil, err
		}
		switch tag {
		case 0:
			if key.s, err = r.str(); err != nil {
				return nil, err
			}
		case 1:
			key.isInt = true
			if key.i, err = r.varint(); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("bad group key tag %d", tag)
		}
		if _, dup := p.groups[key]; dup {
			return nil, fmt.Errorf("duplicate group %q", key)
		}
		g := p.group(key)
		if err := r.state(p, g); err != nil {
			return nil, fmt.Errorf("group %q: %w", key, err)
		}
	}
	if r.off != len(r.b) {
		return nil, fmt.Errorf("%d trailing bytes", len(r.b)-r.off)
	}
	return p, nil
}

func (r *reader) state(p *Partial, g *state) error {
	var err error
	switch p.kind {
	case kindCount:
		var n uint64
		if n, err = r.uvarint(); err != nil {
			return err
		}
		if n > math.MaxInt64 {
			return errors.New("count overflows int64")
		}
		g.n = int64(n)
	case kindAvg:
		var n uint64
		if n, err = r.uvarint(); err != nil {
			return err
		}
		if n > math.MaxInt64 {
			return errors.New("count overflows int64")
		}
		g.n = int64(n)
		return r.sum(&g.sum)
	case kindSum:
		return r.sum(&g.sum)
	case kindMin, kindMax:
		if g.val, err = r.value(0); err != nil {
			return err
		}
		switch g.val.(type) {
		case nil, int64, float64, string:
		default:
			return fmt.Errorf("%s value is a %s", p.kind, typeName(g.val))
		}
	case kindDistinct:
		m, err := r.count(2)
		if err != nil {
			return err
		}
		for range m {
			b, err := r.bytes()
			if err != nil {
				return err
			}
			if err := checkValue(b); err != nil {
				return err
			}
			if _, dup := g.set[string(b)]; dup {
				return errors.New("duplicate distinct member")
			}
			g.set[string(b)] = struct{}{}
			p.size += len(b) + 2
		}
	case kindTopK:
		m, err := r.count(2)
		if err != nil {
			return err
		}
		if m > p.k {
			return fmt.Errorf("%d topk entries, K is %d", m, p.k)
		}
		for range m {
			var e topEntry
			if e.key, err = r.str(); err != nil {
				return err
			}
			if e.val, err = r.value(0); err != nil {
				return err
			}
			switch e.val.(type) {
			case int64, float64, string:
			default:
				return fmt.Errorf("topk value is a %s", typeName(e.val))
			}
			if len(g.top) > 0 {
				if _, err := compareScalars(g.top[0].val, e.val); err != nil {
					return err
				}
			}
			g.top = append(g.top, e)
		}
	case kindValues:
		m, err := r.count(1)
		if err != nil {
			return err
		}
		g.vals = make([]any, 0, m)
		for range m {
			v, err := r.value(0)
			if err != nil {
				return err
			}
			g.vals = append(g.vals, v)
			g.vsz += sizeOf(v)
		}
		p.size += g.vsz
	}
	return nil
}

func (r *reader) sum(s *exactSum) error {
	flags, err := r.byte()
	if err != nil {
		return err
	}
	if flags&^3 != 0 {
		return fmt.Errorf("bad sum flags %#x", flags)
	}
	if s.i, err = r.varint(); err != nil {
		return err
	}
	if flags&1 != 0 {
		if s.ib, err = r.big(); err != nil {
			return err
		}
	}
	if flags&2 != 0 {
		if s.f, err = r.big(); err != nil {
			return err
		}
	}
	return nil
}

// maxBigBits bounds decoded big integers: a float sum needs about 2100 bits
// (2^1024 × 2^1074) plus headroom for many additions.
const maxBigBits = 4096

func (r *reader) big() (*big.Int, error) {
	sign, err := r.byte()
	if err != nil {
		return nil, err
	}
	if sign > 1 {
		return nil, fmt.Errorf("bad sign %d", sign)
	}
	shift, err := r.uvarint()
	if err != nil {
		return nil, err
	}
	mag, err := r.bytes()
	if err != nil {
		return nil, err
	}
	if shift > maxBigBits || uint64(len(mag))*8+shift > maxBigBits+8 {
		return nil, errors.New("integer too large")
	}
	z := new(big.Int).SetBytes(mag)
	if z.BitLen()+int(shift) > maxBigBits {
		return nil, errors.New("integer too large")
	}
	z.Lsh(z, uint(shift))
	if sign == 1 {
		z.Neg(z)
	}
	return z, nil
}

func (r *reader) value(depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, fmt.Errorf("value nested deeper than %d levels", maxValueDepth)
	}
	tag, err := r.byte()
	if err != nil {
		return nil, err
	}
	switch tag {
	case tagNull:
		return nil, nil
	case tagFalse:
		return false, nil
	case tagTrue:
		return true, nil
	case tagInt:
		return r.varint()
	case tagFloat:
		if len(r.b)-r.off < 8 {
			return nil, errTruncated
		}
		f := math.Float64frombits(binary.LittleEndian.Uint64(r.b[r.off:]))
		r.off += 8
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("non-finite float")
		}
		return f, nil
	case tagString:
		return r.str()
	case tagList:
		n, err := r.count(1)
		if err != nil {
			return nil, err
		}
		out := make([]any, 0, n)
		for range n {
			v, err := r.value(depth + 1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case tagObject:
		n, err := r.count(2)
		if err != nil {
			return nil, err
		}
		out := make(map[string]any, n)
		for range n {
			k, err := r.str()
			if err != nil {
				return nil, err
			}
			if _, dup := out[k]; dup {
				return nil, fmt.Errorf("duplicate object key %q", k)
			}
			v, err := r.value(depth + 1)
			if err != nil {
				return nil, err
			}
			out[k] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("bad value tag %d", tag)
}

// checkValue reports whether b is exactly one encoded value.
func checkValue(b []byte) error {
	r := &reader{b: b}
	if _, err := r.value(0); err != nil {
		return err
	}
	if r.off != len(b) {
		return errors.New("trailing bytes in value")
	}
	return nil
}
