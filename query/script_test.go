package query

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

const wordCount = `
def map(k, v):
    for w in v.text.split():
        emit(w, 1)

def combine(word, counts):
    total = 0
    for c in counts:
        total += c
    return total

def reduce(word, counts):
    return combine(word, counts)
`

func TestStarlarkWordCount(t *testing.T) {
	kvs, recs := genData(3000, 4)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string]any{}
	for _, r := range recs {
		for _, w := range strings.Fields(r.Text) {
			n, _ := want[w].(int64)
			want[w] = n + 1
		}
	}
	res, err := runJob(t, Job{Script: wordCount}, nil, split(kvs, 8, rng), rng)
	if err != nil {
		t.Fatal(err)
	}
	if got := resultMap(res); !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	// Without reduce, combine finishes the job.
	noReduce := strings.Split(wordCount, "def reduce")[0]
	res, err = runJob(t, Job{Script: noReduce}, nil, split(kvs, 5, rng), rng)
	if err != nil {
		t.Fatal(err)
	}
	if got := resultMap(res); !reflect.DeepEqual(got, want) {
		t.Fatalf("without reduce: got %v\nwant %v", got, want)
	}
}

func TestStarlarkGroupBy(t *testing.T) {
	kvs, recs := genData(2000, 5)
	rng := rand.New(rand.NewPCG(3, 4))
	script := `
def map(k, v):
    if v.get("amount") != None and v.price >= args.min_price:
        emit(v.region, {"amount": v.amount, "shop": v.shop})

def reduce(region, rows):
    shops = {}
    total = 0
    for r in rows:
        total += r["amount"]
        shops[r["shop"]] = True
    return {"n": len(rows), "total": total, "shops": len(shops), "first_shop": sorted(shops.keys())[0]}
`
	type agg struct {
		n, total int64
		shops    map[string]bool
	}
	ref := map[string]*agg{}
	for _, r := range recs {
		if r.Amount == nil || r.Price < 100 {
			continue
		}
		a := ref[r.Region]
		if a == nil {
			a = &agg{shops: map[string]bool{}}
			ref[r.Region] = a
		}
		a.n++
		a.total += *r.Amount
		a.shops[r.Shop] = true
	}
	want := map[string]any{}
	for region, a := range ref {
		first := ""
		for s := range a.shops {
			if first == "" || s < first {
				first = s
			}
		}
		want[region] = map[string]any{"n": a.n, "total": a.total, "shops": int64(len(a.shops)), "first_shop": first}
	}
	res, err := runJob(t, Job{Script: script, Args: `{"min_price": 100}`}, nil, split(kvs, 6, rng), rng)
	if err != nil {
		t.Fatal(err)
	}
	if got := resultMap(res); !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %s\nwant %s", mustJSON(t, got), mustJSON(t, want))
	}
}

func TestScriptWithoutCombineOrReduceListsValues(t *testing.T) {
	data := []kv{{"a", []byte(`1`)}, {"b", []byte(`2`)}, {"c", []byte(`3`)}}
	script := "def map(k, v):\n    emit(v % 2, k)\n"
	res, err := runJob(t, Job{Script: script}, nil, [][]kv{data[2:], data[:2]}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := mustJSON(t, res.Groups)
	want := `[{"Key":"0","Value":["b"]},{"Key":"1","Value":["a","c"]}]`
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestGoFunction(t *testing.T) {
	kvs, recs := genData(2000, 6)
	rng := rand.New(rand.NewPCG(5, 6))
	reg := NewRegistry()
	sum := func(key string, vals []any) (any, error) {
		var n int64
		for _, v := range vals {
			n += v.(int64)
		}
		return n, nil
	}
	err := reg.Register("regions", GoFunc{
		Map: func(ctx context.Context, key, value, args []byte, emit func(string, any) error) error {
			r, ok := parseJSON(value)
			if !ok {
				return errors.New("not JSON")
			}
			region, _ := r.(*object).Attr("region")
			return emit(strings.Trim(region.String(), `"`)+strings.Trim(string(args), `"`), 1) // an int, not int64: normalized
		},
		Combine: sum,
		Reduce:  sum,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Register("regions", GoFunc{Map: func(context.Context, []byte, []byte, []byte, func(string, any) error) error { return nil }}); !errors.Is(err, ErrRegister) {
		t.Fatalf("duplicate register: %v", err)
	}
	if err := reg.Register("", GoFunc{}); !errors.Is(err, ErrRegister) {
		t.Fatalf("empty register: %v", err)
	}
	want := map[string]any{}
	for _, r := range recs {
		if r.Region == "eu" {
			continue
		}
		n, _ := want[r.Region+"!"].(int64)
		want[r.Region+"!"] = n + 1
	}
	res, err := runJob(t, Job{Func: "regions", Filter: `v.region != "eu"`, Args: `"!"`}, reg, split(kvs, 7, rng), rng)
	if err != nil {
		t.Fatal(err)
	}
	if got := resultMap(res); !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if _, err := Compile(Job{Map: "m", Func: "nope"}, reg); !errors.Is(err, ErrUnknownFunction) {
		t.Fatalf("unknown func: %v", err)
	}
	if _, err := Compile(Job{Map: "m", Func: "regions"}, nil); !errors.Is(err, ErrUnknownFunction) {
		t.Fatalf("nil registry: %v", err)
	}
}

// A Program is shared by concurrent tasks (the node runs several).
func TestConcurrentTasks(t *testing.T) {
	kvs, _ := genData(1200, 7)
	prog := mustCompile(t, Job{Script: wordCount})
	want, err := runParts(t, prog, [][]kv{kvs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	parts := split(kvs, 6, rand.New(rand.NewPCG(9, 9)))
	partials := make([]*Partial, len(parts))
	errs := make(chan error, len(parts))
	for i, part := range parts {
		go func() {
			p, _, err := prog.RunTask(t.Context(), scanOf(part))
			partials[i] = p
			errs <- err
		}()
	}
	for range parts {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	merged := partials[0]
	for _, p := range partials[1:] {
		if err := prog.Merge(merged, p); err != nil {
			t.Fatal(err)
		}
	}
	got, err := prog.Finalize(t.Context(), merged)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("concurrent tasks: %v\nwant %v", got, want)
	}
}

func TestEmitKeysAndValues(t *testing.T) {
	data := []kv{{"a", []byte(`{"n": 1}`)}}
	for _, c := range []struct {
		script, errPart string
	}{
		{"def map(k, v):\n    emit([1], 1)\n", "key must be a string or an int"},
		{"def map(k, v):\n    emit(k, set([1]))\n", "not JSON-able"},
		{"def map(k, v):\n    emit(k, 1 << 70)\n", "does not fit in 64 bits"},
		{"def map(k, v):\n    emit(k, float('nan'))\n", "not JSON-able"},
		{"def map(k, v):\n    emit(k, {1: 2})\n", "JSON keys are strings"},
		{"def map(k, v):\n    pass\ndef reduce(k, vs):\n    emit(k, 1)\n", ""},
	} {
		_, err := runJob(t, Job{Script: c.script}, nil, [][]kv{data}, nil)
		if c.errPart == "" {
			if err != nil {
				t.Errorf("%q: %v", c.script, err)
			}
			continue
		}
		if !errors.Is(err, ErrScript) || !strings.Contains(err.Error(), c.errPart) || !strings.Contains(err.Error(), "script:2:") {
			t.Errorf("%q: err = %v, want ErrScript mentioning %q at script:2", c.script, err, c.errPart)
		}
	}
	res, err := runJob(t, Job{Script: "def map(k, v):\n    emit(10, 1)\n    emit(9, 2)\n    emit('x', v)\n"}, nil, [][]kv{data}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(res.Groups), "[{9 [2]} {10 [1]} {x [map[n:1]]}]"; got != want {
		t.Fatalf("groups = %s, want %s (ints numerically, before strings)", got, want)
	}
}

func TestSafeHelpers(t *testing.T) {
	data := [][]kv{{{"a", []byte(`{"price": 12.7, "tags": ["x", "y"]}`)}, {"b", []byte(`{"price": 3.2, "tags": []}`)}}}
	res, err := runJob(t, Job{Agg: "count", Filter: "math.floor(v.price) >= 10"}, nil, data, nil)
	if err != nil || res.Groups[0].Value != int64(1) {
		t.Fatalf("math: %v %v", res, err)
	}
	script := "def map(k, v):\n    emit(k, json.encode(v.tags))\n    emit(k + '-back', json.decode(json.encode(v))['price'])\n"
	res, err = runJob(t, Job{Script: script}, nil, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := mustJSON(t, res.Groups), `[{"Key":"a","Value":["[\"x\",\"y\"]"]},{"Key":"a-back","Value":[12.7]},{"Key":"b","Value":["[]"]},{"Key":"b-back","Value":[3.2]}]`; got != want {
		t.Fatalf("json: got %s, want %s", got, want)
	}
}
