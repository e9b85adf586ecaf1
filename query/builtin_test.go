package query

import (
	"fmt"
	"math/big"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// ref computes a built-in aggregate the straightforward way.
type ref struct {
	filter func(r record) bool
	by     func(r record) string
	val    func(r record) (any, bool) // false: skip (None)
}

func (f ref) groups(recs []record, hasBy bool) map[string][]record {
	out := map[string][]record{}
	if !hasBy {
		out[""] = nil
	}
	for _, r := range recs {
		if f.filter != nil && !f.filter(r) {
			continue
		}
		key := ""
		if f.by != nil {
			key = f.by(r)
		}
		out[key] = append(out[key], r)
	}
	return out
}

func (f ref) values(rs []record) []any {
	var out []any
	for _, r := range rs {
		if v, ok := f.val(r); ok {
			out = append(out, v)
		}
	}
	return out
}

func refSum(vals []any) (*big.Rat, bool) {
	sum, anyFloat := new(big.Rat), false
	for _, v := range vals {
		switch v := v.(type) {
		case int64:
			sum.Add(sum, new(big.Rat).SetInt64(v))
		case float64:
			anyFloat = true
			sum.Add(sum, new(big.Rat).SetFloat64(v))
		}
	}
	return sum, anyFloat
}

func less(a, b any) bool {
	switch a := a.(type) {
	case int64:
		return a < b.(int64)
	case float64:
		return a < b.(float64)
	case string:
		return a < b.(string)
	}
	panic("unordered")
}

func (f ref) compute(kind string, k int, recs []record, hasBy bool) map[string]any {
	out := map[string]any{}
	for key, rs := range f.groups(recs, hasBy) {
		switch kind {
		case "count":
			out[key] = int64(len(rs))
		case "sum":
			sum, anyFloat := refSum(f.values(rs))
			if anyFloat {
				x, _ := sum.Float64()
				out[key] = x
			} else {
				out[key] = sum.Num().Int64()
			}
		case "avg":
			vals := f.values(rs)
			if len(vals) == 0 {
				out[key] = nil
				continue
			}
			sum, _ := refSum(vals)
			x, _ := sum.Quo(sum, new(big.Rat).SetInt64(int64(len(vals)))).Float64()
			out[key] = x
		case "min", "max":
			var best any
			for _, v := range f.values(rs) {
				if best == nil || (kind == "min" && less(v, best)) || (kind == "max" && less(best, v)) {
					best = v
				}
			}
			out[key] = best
		case "distinct":
			set := map[string]bool{}
			for _, v := range f.values(rs) {
				set[fmt.Sprintf("%T:%v", v, v)] = true
			}
			out[key] = int64(len(set))
		case "topk":
			type e struct {
				key string
				val any
			}
			var es []e
			for _, r := range rs {
				if v, ok := f.val(r); ok {
					es = append(es, e{r.key, v})
				}
			}
			sort.Slice(es, func(i, j int) bool {
				if less(es[j].val, es[i].val) {
					return true
				}
				if less(es[i].val, es[j].val) {
					return false
				}
				return es[i].key < es[j].key
			})
			list := []any{}
			for i := 0; i < len(es) && i < k; i++ {
				list = append(list, map[string]any{"key": es[i].key, "value": es[i].val})
			}
			out[key] = list
		}
	}
	return out
}

func amount(r record) (any, bool) {
	if r.Amount == nil {
		return nil, false
	}
	return *r.Amount, true
}

func TestBuiltinsMatchReference(t *testing.T) {
	kvs, recs := genData(2000, 1)
	rng := rand.New(rand.NewPCG(7, 8))
	parts := split(kvs, 9, rng)

	byRegion := func(r record) string { return r.Region }
	isEU := func(r record) bool { return r.Region == "eu" }
	price := func(r record) (any, bool) { return r.Price, true }
	name := func(r record) (any, bool) { return r.Name, true }
	shop := func(r record) (any, bool) { return r.Shop, true }
	cases := []struct {
		filter, agg string
		kind        string
		k           int
		ref         ref
	}{
		{"", "count", "count", 0, ref{}},
		{`v.region == "eu"`, "count", "count", 0, ref{filter: isEU}},
		{`k >= "k002000"`, "count()", "count", 0, ref{filter: func(r record) bool { return r.key >= "k002000" }}},
		{"", "count by v.region", "count", 0, ref{by: byRegion}},
		{"", "count by len(v.text.split())", "count", 0, ref{by: func(r record) string { return strconv.Itoa(len(strings.Fields(r.Text))) }}},
		{"", "count by v.price > 5000", "count", 0, ref{by: func(r record) string { return strconv.FormatBool(r.Price > 5000) }}},
		{"", `sum(v.get("amount"))`, "sum", 0, ref{val: amount}},
		{`"amount" in v`, "sum(v.amount) by v.region", "sum", 0, ref{filter: func(r record) bool { return r.Amount != nil }, by: byRegion, val: amount}},
		{"", "sum(v.price)", "sum", 0, ref{val: price}},
		{"", `sum(v["price"]) by v.shop`, "sum", 0, ref{by: func(r record) string { return r.Shop }, val: price}},
		{"", `min(v.get("amount"))`, "min", 0, ref{val: amount}},
		{"", `max(v.get("amount")) by v.region`, "max", 0, ref{by: byRegion, val: amount}},
		{"", "min(v.name) by v.region", "min", 0, ref{by: byRegion, val: name}},
		{`v.region == "eu"`, "max(v.price)", "max", 0, ref{filter: isEU, val: price}},
		{"", `avg(v.get("amount"))`, "avg", 0, ref{val: amount}},
		{"", "avg(v.price) by v.region", "avg", 0, ref{by: byRegion, val: price}},
		{`v.region == "nowhere"`, "avg(v.price)", "avg", 0, ref{filter: func(record) bool { return false }, val: price}},
		{"", "distinct(v.shop)", "distinct", 0, ref{val: shop}},
		{"", "distinct(v.name) by v.region", "distinct", 0, ref{by: byRegion, val: name}},
		{"", `topk(5, v.get("amount"))`, "topk", 5, ref{val: amount}},
		{"", "topk(3, v.price) by v.region", "topk", 3, ref{by: byRegion, val: price}},
		{`v.region != "eu"`, "topk(4, v.name)", "topk", 4, ref{filter: func(r record) bool { return r.Region != "eu" }, val: name}},
	}
	for _, c := range cases {
		t.Run(c.filter+" "+c.agg, func(t *testing.T) {
			res, err := runJob(t, Job{Filter: c.filter, Agg: c.agg}, nil, parts, rng)
			if err != nil {
				t.Fatal(err)
			}
			hasBy := strings.Contains(c.agg, " by ")
			want := c.ref.compute(c.kind, c.k, recs, hasBy)
			if got := resultMap(res); !reflect.DeepEqual(got, want) {
				t.Fatalf("got  %s\nwant %s", mustJSON(t, got), mustJSON(t, want))
			}
			if !slices.IsSortedFunc(res.Groups, func(a, b Group) int {
				ai, aerr := strconv.ParseInt(a.Key, 10, 64)
				bi, berr := strconv.ParseInt(b.Key, 10, 64)
				if aerr == nil && berr == nil {
					return int(ai - bi)
				}
				return strings.Compare(a.Key, b.Key)
			}) {
				t.Fatalf("groups not sorted: %v", res.Groups)
			}
		})
	}
}

// The same job over a different partitioning and merge order gives the
// same bytes: float sums are exact until the final rounding.
func TestBuiltinsIndependentOfPartitioning(t *testing.T) {
	kvs, _ := genData(2000, 2)
	var first string
	for i := range 4 {
		rng := rand.New(rand.NewPCG(uint64(i), 99))
		res, err := runJob(t, Job{Agg: "sum(v.price) by v.region"}, nil, split(kvs, 2+3*i, rng), rng)
		if err != nil {
			t.Fatal(err)
		}
		b, err := res.JSON()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = string(b)
		} else if string(b) != first {
			t.Fatalf("partitioning %d changed the result:\n%s\n%s", i, b, first)
		}
	}
}

func TestSumIsExactInt64(t *testing.T) {
	big62 := int64(1) << 62
	mk := func(vals ...int64) []kv {
		var out []kv
		for i, v := range vals {
			out = append(out, kv{fmt.Sprintf("k%d", i), []byte(strconv.FormatInt(v, 10))})
		}
		return out
	}
	// Intermediate sums leave int64 but the total does not: exact.
	res, err := runJob(t, Job{Agg: "sum(v)"}, nil, [][]kv{mk(big62, big62), mk(-big62, -big62, 3)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Groups[0].Value; got != int64(3) {
		t.Fatalf("sum = %v (%T), want 3", got, got)
	}
	// 2^62 + 1 is not representable in float64: still exact.
	res, err = runJob(t, Job{Agg: "sum(v)"}, nil, [][]kv{mk(big62, 1), mk(1<<40, -(1 << 40))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Groups[0].Value; got != big62+1 {
		t.Fatalf("sum = %v, want %d", got, big62+1)
	}
	// A total beyond int64 is an error, not a wrapped or rounded number.
	_, err = runJob(t, Job{Agg: "sum(v)"}, nil, [][]kv{mk(big62, big62)}, nil)
	if err == nil || !strings.Contains(err.Error(), "does not fit in int64") {
		t.Fatalf("err = %v, want an int64 overflow", err)
	}
	// A Starlark int beyond 64 bits cannot leave Starlark.
	_, err = runJob(t, Job{Agg: "sum(v * 4)"}, nil, [][]kv{mk(big62)}, nil)
	if err == nil || !strings.Contains(err.Error(), "does not fit in 64 bits") {
		t.Fatalf("err = %v, want a 64-bit error", err)
	}
	// Mixing a float makes the sum a float.
	res, err = runJob(t, Job{Agg: "sum(v)"}, nil, [][]kv{mk(2, 3), {{"x", []byte("0.5")}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Groups[0].Value; got != 5.5 {
		t.Fatalf("sum = %v (%T), want 5.5", got, got)
	}
}

func TestNoMatchesAndEmptyPartitions(t *testing.T) {
	for _, agg := range []string{"count", "sum(v.x)", "min(v.x)", "avg(v.x)", "distinct(v.x)", "topk(2, v.x)"} {
		res, err := runJob(t, Job{Agg: agg}, nil, [][]kv{nil, nil}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Groups) != 1 || res.Groups[0].Key != "" {
			t.Fatalf("%s: groups = %v, want one group with key \"\"", agg, res.Groups)
		}
		prog, err := Compile(Job{Map: "m", Agg: agg + " by v.y"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err = prog.Finalize(t.Context(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Groups) != 0 {
			t.Fatalf("%s by: groups = %v, want none", agg, res.Groups)
		}
	}
}

func TestValuesThatAreNotJSON(t *testing.T) {
	data := []kv{{"a", []byte("plain text")}, {"b", []byte(`{"x": 1}`)}, {"c", []byte(`"quoted"`)}, {"d", []byte("{broken")}}
	res, err := runJob(t, Job{Agg: "count by type(v)"}, nil, [][]kv{data}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"string": int64(3), "object": int64(1)}
	if got := resultMap(res); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestCountPartialIsTiny(t *testing.T) {
	kvs, _ := genData(1000, 3)
	prog, err := Compile(Job{Map: "m", Agg: "count"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, stats, err := prog.RunTask(t.Context(), scanOf(kvs))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 8 {
		t.Fatalf("a count partial is %d bytes: %x", len(b), b)
	}
	if stats.Entries != 1000 || stats.Matched != 1000 || stats.BytesRead == 0 {
		t.Fatalf("stats = %+v", stats)
	}
	p2, _, err := mustCompile(t, Job{Map: "m", Agg: "sum(v.price)"}).RunTask(t.Context(), scanOf(kvs))
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := p2.MarshalBinary()
	t.Logf("count partial: %d bytes; float sum partial: %d bytes", len(b), len(b2))
	if len(b2) > 40 {
		t.Fatalf("a float sum partial is %d bytes", len(b2))
	}
}

func mustCompile(t testing.TB, job Job) *Program {
	t.Helper()
	if job.Map == "" {
		job.Map = "m"
	}
	p, err := Compile(job, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
