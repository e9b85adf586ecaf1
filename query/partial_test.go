package query

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

// seedPartials are encodings of every kind of partial, with and without by.
func seedPartials(t testing.TB) [][]byte {
	kvs, _ := genData(60, 11)
	kvs = append(kvs, kv{"big", []byte(`{"amount": 9223372036854775807, "price": 1e300, "region": "eu", "shop": "s", "name": "n", "text": "a"}`)})
	jobs := []Job{
		{Agg: "count"},
		{Agg: "count by v.region"},
		{Agg: "count by len(v.text)"},
		{Agg: `sum(v.get("amount")) by v.region`},
		{Agg: "sum(v.price)"},
		{Agg: "avg(v.price) by v.shop"},
		{Agg: "min(v.name)"},
		{Agg: `max(v.get("amount")) by v.region`},
		{Agg: "distinct(v.shop) by v.region"},
		{Agg: "distinct(v)"},
		{Agg: "topk(3, v.price) by v.region"},
		{Agg: "topk(2, v.name)"},
		{Script: wordCount},
		{Script: "def map(k, v):\n    emit(len(k), [v.get('amount'), {'r': v.region, 'p': v.price, 'ok': True, 'no': None}])\n"},
	}
	var out [][]byte
	for _, j := range jobs {
		j.Map = "m"
		prog, err := Compile(j, nil)
		if err != nil {
			t.Fatal(err)
		}
		p, _, err := prog.RunTask(t.Context(), scanOf(kvs))
		if err != nil {
			t.Fatal(err)
		}
		b, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func TestPartialRoundTrip(t *testing.T) {
	for _, b := range seedPartials(t) {
		p, err := UnmarshalPartial(b)
		if err != nil {
			t.Fatalf("%x: %v", b, err)
		}
		b2, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, b2) {
			t.Fatalf("round trip changed the encoding:\n%x\n%x", b, b2)
		}
	}
}

func TestUnmarshalPartialRejectsDamage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, b := range seedPartials(t) {
		for i := range len(b) { // truncations (all of them for small partials)
			if len(b) > 400 && i%7 != 0 && i < len(b)-50 {
				continue
			}
			if _, err := UnmarshalPartial(b[:i]); !errors.Is(err, ErrBadPartial) {
				t.Fatalf("truncated to %d of %d bytes: err = %v", i, len(b), err)
			}
		}
		if _, err := UnmarshalPartial(append(bytes.Clone(b), 0)); !errors.Is(err, ErrBadPartial) {
			t.Fatalf("trailing byte accepted")
		}
		for range 100 { // random corruption: an error or a valid partial, never a panic
			c := bytes.Clone(b)
			c[rng.IntN(len(c))] = byte(rng.IntN(256))
			_, _ = UnmarshalPartial(c)
		}
	}
	for _, garbage := range [][]byte{nil, {}, {0}, {1}, {2, 1, 0}, {1, 99, 0}, {1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, []byte("hello, world")} {
		if _, err := UnmarshalPartial(garbage); !errors.Is(err, ErrBadPartial) {
			t.Fatalf("%x: err = %v", garbage, err)
		}
	}
}

func FuzzUnmarshalPartial(f *testing.F) {
	for _, b := range seedPartials(f) {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1, 1, 1, 0, 0, 5})
	f.Add([]byte{1, 7, 3, 1, 0, 0, 1, 1, 'k', 3, 2})
	f.Add([]byte{1, 2, 1, 0, 0, 3, 0, 0, 1, 0x80, 0x10, 1, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := UnmarshalPartial(b)
		if err != nil {
			if !errors.Is(err, ErrBadPartial) {
				t.Fatalf("error without ErrBadPartial: %v", err)
			}
			return
		}
		// What decodes re-encodes canonically, and that is stable.
		b2, err := p.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		p2, err := UnmarshalPartial(b2)
		if err != nil {
			t.Fatalf("re-encoding does not decode: %v", err)
		}
		b3, err := p2.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b2, b3) {
			t.Fatalf("encoding not stable:\n%x\n%x", b2, b3)
		}
		// A decoded partial can be finalized by a program of its kind
		// without panicking.
		if job, ok := jobForKind(p); ok {
			prog, err := Compile(job, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = prog.Finalize(t.Context(), p)
		}
	})
}

func jobForKind(p *Partial) (Job, bool) {
	aggs := map[kind]string{kindCount: "count by v", kindSum: "sum(v) by v", kindMin: "min(v) by v", kindMax: "max(v) by v",
		kindAvg: "avg(v) by v", kindDistinct: "distinct(v) by v"}
	if a, ok := aggs[p.kind]; ok {
		return Job{Map: "m", Agg: a}, true
	}
	if p.kind == kindTopK {
		return Job{Map: "m", Agg: "topk(" + itoa(p.k) + ", v) by v"}, true
	}
	return Job{Map: "m", Script: "def map(k, v):\n    pass\n"}, true
}

func itoa(n int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}
