package query

import (
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/crossarch.golden")

// crossArchData is fixed and generated with nothing arch-dependent: PCG
// (uint64 arithmetic), strconv, exact float constructions.
func crossArchData() []kv {
	rng := rand.New(rand.NewPCG(20260101, 42))
	var out []kv
	for i := range 1500 {
		n := rng.Int64N(1<<62) | 1<<33 // beyond 2^31 always, up to 2^62
		if i%50 == 0 {
			n = 1<<62 - int64(i) // near 2^62
		}
		m := rng.Int64N(1<<41) - 1<<40
		f := float64(rng.Int64N(1<<30)) / 1024 // exact
		var words []string
		for range 1 + rng.IntN(5) {
			words = append(words, wordsForGolden[rng.IntN(len(wordsForGolden))])
		}
		val := fmt.Sprintf(`{"n": %d, "m": %d, "f": %s, "b": %d, "text": %q}`,
			n, m, strconv.FormatFloat(f, 'g', -1, 64), rng.IntN(10), strings.Join(words, " "))
		out = append(out, kv{fmt.Sprintf("g%04d", i), []byte(val)})
	}
	return out
}

var wordsForGolden = strings.Fields("the quick brown fox jumps over the lazy dog while zerogrid counts every word on tiny machines")

const bigIntScript = `
M = (1 << 61) - 1  # a Mersenne prime; keeps combined values within int64

def add(vals):
    t = 0
    for x in vals:
        t += int(x)
    return t

def map(k, v):
    n = v.n
    emit("sum_n", str(n))  # the total passes 2^64: carried as a decimal string
    emit("sum_sq_mod", (n * n) % 1000000007)
    emit("mix", ((n * 3 + v.m * 7) // 5) ^ (n >> 7))
    emit("neg", -n // 7 + v.m % 13)
    emit("max_n", n)
    emit("div", n / 4096)
    emit("prod_mod", n % M)
    emit(v.b, n % 9973)

def combine(key, vals):
    if key == "sum_n":
        return str(add(vals))
    if key == "max_n" or key == "div":
        return max(vals)
    if key == "prod_mod":
        p = 1
        for x in vals:
            p = (p * x) % M
        return p
    return add(vals) % M

def reduce(key, vals):
    if key == "sum_n":
        t = add(vals)
        return {"dec": str(t), "hex": "%x" % t, "digits": len(str(t)), "mod": t % M}
    return combine(key, vals)
`

func TestCrossArchGolden(t *testing.T) {
	data := crossArchData()
	// Seven uneven partitions, merged in a fixed order.
	var parts [][]kv
	for i := range 7 {
		parts = append(parts, data[i*i*len(data)/49:(i+1)*(i+1)*len(data)/49])
	}
	jobs := []Job{
		{Script: bigIntScript, Args: `"big integers"`},
		{Script: wordCount, Args: `"word count"`},
		{Agg: "sum(v.n % 1000000) by v.b"},
		{Agg: "sum(v.f) by v.b"},
		{Agg: "avg(v.f)"},
		{Agg: "avg(v.n)"},
		{Agg: "max(v.n) by v.b"},
		{Agg: "min(v.m)"},
		{Agg: "topk(3, v.n)"},
		{Agg: "distinct(v.n % 97)", Filter: "v.n > (1 << 61)"},
		{Agg: "count by v.text.split()[0]", Filter: `k < "g1000"`},
	}
	var out bytes.Buffer
	for _, job := range jobs {
		job.Map = "golden"
		prog, err := Compile(job, nil)
		if err != nil {
			t.Fatal(err)
		}
		var merged *Partial
		for i := len(parts) - 1; i >= 0; i-- {
			p, _, err := prog.RunTask(t.Context(), scanOf(parts[i]))
			if err != nil {
				t.Fatalf("%+v: %v", job, err)
			}
			b, err := p.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if p, err = UnmarshalPartial(b); err != nil {
				t.Fatal(err)
			}
			if merged == nil {
				merged = p
			} else if err := prog.Merge(merged, p); err != nil {
				t.Fatal(err)
			}
		}
		res, err := prog.Finalize(t.Context(), merged)
		if err != nil {
			t.Fatalf("%+v: %v", job, err)
		}
		b, err := res.JSON()
		if err != nil {
			t.Fatal(err)
		}
		what := job.Agg
		if job.Script != "" {
			what = "script: " + job.Args
		}
		fmt.Fprintf(&out, "# %s | filter %q\n%s\n", what, job.Filter, b)
	}
	path := filepath.Join("testdata", "crossarch.golden")
	if *update {
		if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("results differ from %s:\ngot:\n%s\nwant:\n%s", path, out.Bytes(), want)
	}
}
