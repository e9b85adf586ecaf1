package query

import (
	"errors"
	"fmt"
	"testing"
)

// The Go fast path must answer exactly as Starlark does, or not at all.
func TestFastPathAgreesWithStarlark(t *testing.T) {
	records := []string{
		`{"a": 1, "s": "eu", "f": 1.5, "b": true, "n": null, "o": {"x": 2, "y": "z"}, "l": [1, 2]}`,
		`{"a": 2, "s": "us", "f": 2, "b": false, "o": {"x": "2"}}`,
		`{"a": 1.0, "s": "", "f": -0.0, "o": {}}`,
		`{"a": "1", "s": 5, "f": 1e300}`,
		`{"a": 99999999999999999999, "s": "eu"}`,
		`{"a": 3, "a": 4, "s": "dup"}`,
		`{"\u0061": 7, "s\u0000": "esc", "s": "caf\u00e9"}`,
		`{"a": -9223372036854775808, "s": "min"}`,
		`{"a": 9223372036854775807, "s": "max"}`,
		`{}`,
		`[1, 2, 3]`,
		`"a string"`,
		`42`,
		`not json at all`,
		`{"a": 1,}`,
		`   {"a" : 5 , "s" : "spaced" }   `,
		`{"o": {"o": {"o": {"a": 1}}}}`,
	}
	var data []kv
	for i, r := range records {
		data = append(data, kv{fmt.Sprintf("r%02d", i), []byte(r)})
	}
	filters := []string{
		"", `v.s == "eu"`, `v.s != "eu"`, "v.a == 1", "v.a == 1.0", "v.a > 1", "v.a <= 2", "v.f < 2", "v.b", "not v.b", "v.n == None",
		`v["s"] == "eu"`, "v.o.x == 2", `v.o["x"] == "2"`, `k > "r05"`, `k == "r03" or v.a == 2`, `v.a == 1 and v.s == "eu"`,
		"v.a", "v.s", "v.missing == 1", `v == "a string"`, "v == 42", "v.a > v.f", "v.a == v.f", `v.s < "f"`, `v.o.o.o.a == 1`,
		`v.a == True`, `v.b == 1`, "v.l == 1", "v.o", `not (v.a == 1 or v.a == 2)`, "v.a != None",
	}
	aggs := []string{
		"count", "count by v.s", "sum(v.a)", "sum(v.f) by v.s", "min(v.a)", "max(v.s)", "avg(v.f)", "distinct(v.a)",
		"topk(2, v.a)", "count by v.a", "count by v.f", "count by v.b", "count by v.n", "count by k", "sum(v.o.x)", "max(v)",
		"count by v.o", "distinct(v.s) by v.b",
	}
	for _, f := range filters {
		for _, a := range aggs {
			job := Job{Map: "m", Filter: f, Agg: a}
			fast, err := Compile(job, nil)
			if err != nil {
				t.Fatal(err)
			}
			slow, err := Compile(job, nil)
			if err != nil {
				t.Fatal(err)
			}
			slow.fastFilter, slow.fastAgg, slow.fastBy = nil, nil, nil
			got, gerr := runParts(t, fast, [][]kv{data[:7], data[7:]}, nil)
			want, werr := runParts(t, slow, [][]kv{data[:7], data[7:]}, nil)
			if (gerr == nil) != (werr == nil) || (gerr != nil && !sameKind(gerr, werr)) {
				t.Errorf("filter %q agg %q: fast err %v, Starlark err %v", f, a, gerr, werr)
				continue
			}
			if gerr != nil {
				continue
			}
			if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
				t.Errorf("filter %q agg %q:\nfast     %s\nStarlark %s", f, a, g, w)
			}
		}
	}
}

func sameKind(a, b error) bool {
	for _, s := range []error{ErrScript, ErrStepBudget, ErrOutputCap} {
		if errors.Is(a, s) != errors.Is(b, s) {
			return false
		}
	}
	return true
}

func TestFastFormsCompile(t *testing.T) {
	for src, want := range map[string]bool{
		`v.region == "eu"`: true, `v["a"].b >= 3`: true, "k": true, `not v.x or v.y == None`: true,
		"v.x + 1": false, "len(v)": false, `v.get("a")`: false, "v[0]": false, "k.upper()": false, "args.x == 1": false,
	} {
		e, err := dialect().ParseExpr("t", src, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := compileFast(e) != nil; got != want {
			t.Errorf("%s: fast form %v, want %v", src, got, want)
		}
	}
}

// FuzzFastPath feeds arbitrary stored values to the fast path and to
// Starlark and wants the same answer (or the same kind of error).
func FuzzFastPath(f *testing.F) {
	for _, s := range []string{`{"a": 1, "s": "eu", "o": {"x": 2}}`, `{"a": "1"}`, `{"a": 1e5, "a": null}`, `[]`, `"eu"`, `{"\u0061": true}`} {
		f.Add([]byte(s))
	}
	type pair struct{ fast, slow *Program }
	var progs []pair
	for _, job := range []Job{
		{Filter: `v.s == "eu" or v.a > 1`, Agg: "sum(v.a) by v.s"},
		{Filter: `not v.o.x`, Agg: "min(v.a)"},
		{Filter: `v.a != None and v["s"] < "m"`, Agg: "topk(2, v.a) by v.o.x"},
		{Filter: `v == "eu"`, Agg: "distinct(v.a)"},
	} {
		job.Map = "m"
		fast := mustCompile(f, job)
		slow := mustCompile(f, job)
		slow.fastFilter, slow.fastAgg, slow.fastBy = nil, nil, nil
		progs = append(progs, pair{fast, slow})
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		data := [][]kv{{{"k", b}}}
		for _, p := range progs {
			got, gerr := runParts(t, p.fast, data, nil)
			want, werr := runParts(t, p.slow, data, nil)
			if (gerr == nil) != (werr == nil) || (gerr != nil && !sameKind(gerr, werr)) {
				t.Fatalf("%q: fast err %v, Starlark err %v", b, gerr, werr)
			}
			if gerr == nil && mustJSON(t, got) != mustJSON(t, want) {
				t.Fatalf("%q: fast %s, Starlark %s", b, mustJSON(t, got), mustJSON(t, want))
			}
		}
	})
}
