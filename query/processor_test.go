package query

import (
	"errors"
	"strings"
	"testing"
)

const counterProcessor = `
def process(key, value, args):
    if value == None:
        return {"count": args.by, "key": key}
    value.count += args.by
    return value
`

func TestProcessorIncrementsACounter(t *testing.T) {
	p, err := CompileProcessor(counterProcessor, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	// Absent: process sees None.
	v, del, err := p.Apply(t.Context(), []byte("k1"), nil, false, []byte(`{"by": 5}`))
	if err != nil || del || string(v) != `{"count":5,"key":"k1"}` {
		t.Fatalf("absent: %q %v %v", v, del, err)
	}
	// Present: field order is kept, big ints stay exact.
	v, del, err = p.Apply(t.Context(), []byte("k1"), []byte(`{"name": "x", "count": 4611686018427387904, "tags": ["a", 1.5]}`), true, []byte(`{"by": 3}`))
	if err != nil || del {
		t.Fatal(err, del)
	}
	if want := `{"name":"x","count":4611686018427387907,"tags":["a",1.5]}`; string(v) != want {
		t.Fatalf("got %s, want %s", v, want)
	}
}

func TestProcessorDeletesAndStores(t *testing.T) {
	p, err := CompileProcessor(`
def process(key, value, args):
    if value == None:
        return "was absent"
    if type(value) == "string":
        return value.upper()
    if value.get("expired"):
        return None
    return value
`, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		value  string
		exists bool
		want   string
		del    bool
	}{
		{"", false, "was absent", false},
		{"plain text", true, "PLAIN TEXT", false},
		{`{"expired": true}`, true, "", true},
		{`{"expired": false}`, true, `{"expired":false}`, false},
	}
	for _, c := range cases {
		v, del, err := p.Apply(t.Context(), []byte("k"), []byte(c.value), c.exists, nil)
		if err != nil || del != c.del || string(v) != c.want {
			t.Errorf("%q: got %q del=%v err=%v, want %q del=%v", c.value, v, del, err, c.want, c.del)
		}
	}
}

func TestProcessorErrors(t *testing.T) {
	cases := []struct {
		src  string
		want error
	}{
		{"def process(key, value, args):\n    return value +\n", ErrSyntax},
		{"def process(key, value):\n    return value\n", ErrBadJob},
		{"def other(key, value, args):\n    return value\n", ErrBadJob},
		{"def process(key, value, args):\n    return nope(value)\n", ErrUnknownFunction},
	}
	for _, c := range cases {
		if _, err := CompileProcessor(c.src, Limits{}); !errors.Is(err, c.want) {
			t.Errorf("%q: err = %v, want %v", c.src, err, c.want)
		}
	}
	run := func(src string, lim Limits, value string) error {
		p, err := CompileProcessor(src, lim)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = p.Apply(t.Context(), []byte("k"), []byte(value), true, nil)
		return err
	}
	if err := run("def process(key, value, args):\n    return value.n + 'x'\n", Limits{}, `{"n": 1}`); !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), "processor:2:") {
		t.Errorf("wrong types: %v", err)
	}
	if err := run("def process(key, value, args):\n    while True:\n        pass\n", Limits{Steps: 10_000}, `1`); !errors.Is(err, ErrStepBudget) {
		t.Errorf("loop: %v", err)
	}
	if err := run("def process(key, value, args):\n    return set([1])\n", Limits{}, `1`); !errors.Is(err, ErrScript) {
		t.Errorf("not JSON-able: %v", err)
	}
	if err := run("def process(key, value, args):\n    return 1 << 64\n", Limits{}, `1`); !errors.Is(err, ErrScript) {
		t.Errorf("beyond 64 bits: %v", err)
	}
	if err := run("def process(key, value, args):\n    return 'x' * 2000\n", Limits{OutputBytes: 1000}, `1`); !errors.Is(err, ErrOutputCap) {
		t.Errorf("output cap: %v", err)
	}
}
