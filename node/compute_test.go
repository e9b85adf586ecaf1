package node_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/node"
)

type sale struct {
	Region string `json:"region"`
	Shop   string `json:"shop"`
	Amount int64  `json:"amount"`
	Text   string `json:"text"`
}

// loadSales writes n records and returns them as the client sees them.
func loadSales(t *testing.T, c *client.Client, mapName string, n int) map[string]sale {
	t.Helper()
	createMap(t, c, mapName)
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"pi", "zero", "grid", "raft", "data", "edge"}
	regions := []string{"eu", "us", "asia"}
	out := map[string]sale{}
	m := c.Map(mapName)
	for i := 0; i < n; i++ {
		s := sale{Region: regions[rng.IntN(3)], Shop: fmt.Sprintf("s%d", rng.IntN(7)), Amount: rng.Int64N(1 << 40),
			Text: words[rng.IntN(6)] + " " + words[rng.IntN(6)]}
		v, _ := json.Marshal(s)
		k := fmt.Sprintf("sale-%05d", i)
		retry(t, 10*time.Second, func(ctx context.Context) error { _, err := m.Put(ctx, []byte(k), v); return err })
		out[k] = s
	}
	return out
}

func groups(res *client.JobResult) map[string]any {
	out := map[string]any{}
	for _, g := range res.Groups {
		out[g.Key] = g.Value
	}
	return out
}

func runJob(t *testing.T, c *client.Client, job client.Job) *client.JobResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := c.Run(ctx, job)
	if err != nil {
		t.Fatalf("job %+v: %v", job, err)
	}
	return res
}

func TestJobsEqualClientSideComputation(t *testing.T) {
	e, c := startWithMaps(t, nil)
	data := loadSales(t, c, "sales", 600)
	// Stale jobs read followers: they see every write once caught up.
	waitCaughtUp(t, c, e)

	// The straightforward computation, over the same data.
	count, sum := map[string]int64{}, map[string]int64{}
	minv, maxv := map[string]int64{}, map[string]int64{}
	distinct := map[string]map[string]bool{}
	var euCount int64
	words := map[string]int64{}
	for _, s := range data {
		count[s.Shop]++
		sum[s.Shop] += s.Amount
		if cur, ok := minv[s.Shop]; !ok || s.Amount < cur {
			minv[s.Shop] = s.Amount
		}
		if s.Amount > maxv[s.Shop] {
			maxv[s.Shop] = s.Amount
		}
		if distinct[s.Region] == nil {
			distinct[s.Region] = map[string]bool{}
		}
		distinct[s.Region][s.Shop] = true
		if s.Region == "eu" {
			euCount++
		}
		for _, w := range strings.Fields(s.Text) {
			words[w]++
		}
	}

	for _, stale := range []bool{false, true} {
		g := groups(runJob(t, c, client.Job{Map: "sales", Agg: "count", Filter: `v.region == "eu"`, Stale: stale}))
		if g[""] != euCount {
			t.Errorf("count eu (stale=%v) = %v, want %d", stale, g[""], euCount)
		}
	}
	g := groups(runJob(t, c, client.Job{Map: "sales", Agg: "count by v.shop"}))
	for shop, n := range count {
		if g[shop] != n {
			t.Errorf("count by shop %s = %v, want %d", shop, g[shop], n)
		}
	}
	g = groups(runJob(t, c, client.Job{Map: "sales", Agg: "sum(v.amount) by v.shop"}))
	for shop, n := range sum {
		if g[shop] != n {
			t.Errorf("sum by shop %s = %v, want %d", shop, g[shop], n)
		}
	}
	g = groups(runJob(t, c, client.Job{Map: "sales", Agg: "min(v.amount) by v.shop"}))
	for shop, n := range minv {
		if g[shop] != n {
			t.Errorf("min by shop %s = %v, want %d", shop, g[shop], n)
		}
	}
	g = groups(runJob(t, c, client.Job{Map: "sales", Agg: "max(v.amount) by v.shop"}))
	for shop, n := range maxv {
		if g[shop] != n {
			t.Errorf("max by shop %s = %v, want %d", shop, g[shop], n)
		}
	}
	g = groups(runJob(t, c, client.Job{Map: "sales", Agg: "avg(v.amount) by v.shop"}))
	for shop, n := range sum {
		want := float64(n) / float64(count[shop])
		got, _ := g[shop].(float64)
		if d := got - want; d > 1e-3*want || d < -1e-3*want {
			t.Errorf("avg by shop %s = %v, want %v", shop, g[shop], want)
		}
	}
	g = groups(runJob(t, c, client.Job{Map: "sales", Agg: "distinct(v.shop) by v.region"}))
	for region, set := range distinct {
		if g[region] != int64(len(set)) {
			t.Errorf("distinct shops in %s = %v, want %d", region, g[region], len(set))
		}
	}
	// top-3 amounts overall.
	var amounts []int64
	for _, s := range data {
		amounts = append(amounts, s.Amount)
	}
	sort.Slice(amounts, func(i, j int) bool { return amounts[i] > amounts[j] })
	top := runJob(t, c, client.Job{Map: "sales", Agg: "topk(3, v.amount)"})
	if !strings.Contains(string(top.JSON), fmt.Sprint(amounts[0])) || !strings.Contains(string(top.JSON), fmt.Sprint(amounts[2])) {
		t.Errorf("topk(3) = %s, want the amounts %v", top.JSON, amounts[:3])
	}

	// Starlark word count, and --into.
	wc := `
def map(k, v):
    for w in v.text.split(" "):
        emit(w, 1)

def total(values):
    t = 0
    for x in values:
        t += x
    return t

def combine(key, values):
    return total(values)

def reduce(key, values):
    return total(values)
`
	res := runJob(t, c, client.Job{Map: "sales", Script: wc})
	g = groups(res)
	for w, n := range words {
		if g[w] != n {
			t.Errorf("word count %s = %v, want %d", w, g[w], n)
		}
	}
	for _, task := range res.Tasks {
		if task.Node == "" || task.Entries == 0 {
			t.Errorf("task report without node or entries: %+v", task)
		}
	}
	ctx := context.Background()
	createMap(t, c, "wordcounts")
	if _, err := c.WriteResult(ctx, "wordcounts", res); err != nil {
		t.Fatal(err)
	}
	for w, n := range words {
		v, _, err := c.Map("wordcounts").Get(ctx, []byte(w))
		if err != nil || string(v) != fmt.Sprint(n) {
			t.Errorf("--into wordcounts[%s] = %q, %v; want %d", w, v, err, n)
		}
	}

	// Explain names a replica per partition.
	plan, _, err := c.Explain(ctx, client.Job{Map: "sales", Agg: "count"})
	if err != nil || len(plan) != 8 {
		t.Fatalf("explain: %d tasks, %v", len(plan), err)
	}
}

func TestJobErrorsAreClearAndWriteNothing(t *testing.T) {
	_, c := startWithMaps(t, nil)
	loadSales(t, c, "sales", 50)
	ctx := context.Background()
	cases := []struct {
		name string
		job  client.Job
		want error
		text string
	}{
		{"runaway loop", client.Job{Map: "sales", Steps: 100000, Script: "def map(k, v):\n    for i in range(1000000000):\n        pass\n"}, grid.ErrJobLimit, "step"},
		{"syntax error", client.Job{Map: "sales", Script: "def map(k, v)\n    emit(k, 1)\n"}, grid.ErrJobInvalid, ""},
		{"wrong types", client.Job{Map: "sales", Agg: `sum(v.amount + "x")`}, grid.ErrJobFailed, ""},
		{"unknown function", client.Job{Map: "sales", Script: "def map(k, v):\n    frobnicate(v)\n"}, grid.ErrJobInvalid, "frobnicate"},
		{"unknown Go function", client.Job{Map: "sales", Func: "nosuch"}, grid.ErrJobInvalid, "nosuch"},
		{"unknown aggregate", client.Job{Map: "sales", Agg: "median(v.amount)"}, grid.ErrJobInvalid, "median"},
		{"unknown map", client.Job{Map: "nosuchmap", Agg: "count"}, grid.ErrUnknownMap, ""},
		{"above the node's ceiling", client.Job{Map: "sales", Agg: "count", Steps: 1 << 40, Deadline: 24 * time.Hour, MemoryBytes: 1 << 40},
			grid.ErrJobInvalid, "more than this node allows"},
	}
	for _, tc := range cases {
		_, err := c.Run(ctx, tc.job)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
			continue
		}
		if tc.text != "" && !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.text)
		}
	}
	names, err := c.ListMaps(ctx)
	if err != nil || len(names) != 1 {
		t.Errorf("maps after failed jobs: %v, %v", names, err)
	}
}

func TestJobSurvivesNodeLossAndHedgesSlowNode(t *testing.T) {
	// n3 is slow: every task there takes 1.5 s more.
	e := startEmbedded(t, 3, func(id string, cfg *node.Config) {
		if id == "n3" {
			cfg.TaskDelay = 1500 * time.Millisecond
		}
	})
	defer e.stopAll()
	c, err := client.Dial(context.Background(), e.peers["n1"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := loadSales(t, c, "sales", 300)
	want := int64(len(data))
	waitCaughtUp(t, c, e)

	// Stale tasks spread over replicas, so n3 gets some: they are hedged.
	res := runJob(t, c, client.Job{Map: "sales", Agg: "count", Stale: true})
	if got := groups(res)[""]; got != want {
		t.Fatalf("count with a slow node = %v, want %d", got, want)
	}
	if res.Hedges == 0 {
		t.Errorf("no task was hedged although n3 is slow")
	}
	if len(res.Tasks) != 8 {
		t.Errorf("%d task reports, want one per partition (8)", len(res.Tasks))
	}

	// Kill n2 while a job runs (n3's delay keeps it running): the job still
	// finishes, exactly, with failed tasks retried elsewhere.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run, err := c.Submit(ctx, client.Job{Map: "sales", Agg: "sum(1)", Stale: true, NoHedge: true})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := run.Next()
	if err != nil {
		t.Fatal(err)
	}
	_ = ev
	e.stop("n2")
	final, err := run.Wait()
	if err != nil {
		t.Fatalf("job after node loss: %v", err)
	}
	if got := groups(final)[""]; got != want {
		t.Fatalf("sum(1) after node loss = %v, want %d", got, want)
	}
}

func TestEntryProcessor(t *testing.T) {
	_, c := startWithMaps(t, []string{"counters"})
	m := c.Map("counters")
	incr := `
def process(key, value, args):
    if value == None:
        return {"n": args["by"]}
    return {"n": value["n"] + args["by"]}
`
	ctx := context.Background()
	// Concurrent increments: each is applied exactly once.
	done := make(chan error, 8)
	for w := 0; w < 8; w++ {
		go func() {
			for i := 0; i < 5; i++ {
				if _, _, _, err := m.Apply(ctx, []byte("hits"), incr, `{"by": 3}`); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for w := 0; w < 8; w++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	v, _, err := m.Get(ctx, []byte("hits"))
	if err != nil || strings.ReplaceAll(string(v), " ", "") != `{"n":120}` {
		t.Fatalf("after 40 increments of 3: %s, %v", v, err)
	}
	_, _, deleted, err := m.Apply(ctx, []byte("hits"), "def process(key, value, args):\n    return None\n", "")
	if err != nil || !deleted {
		t.Fatalf("delete by processor: %v %v", deleted, err)
	}
	if _, _, err := m.Get(ctx, []byte("hits")); !errors.Is(err, grid.ErrNotFound) {
		t.Fatalf("deleted key still there: %v", err)
	}
	if _, _, _, err := m.Apply(ctx, []byte("x"), "def process(key, value, args)\n", ""); !errors.Is(err, grid.ErrJobInvalid) {
		t.Fatalf("processor with a syntax error: %v", err)
	}
	// A processor rewrites the value, not its lifetime: a TTL key keeps its expiry.
	if _, err := m.Put(ctx, []byte("ttl"), []byte(`{"n": 1}`), client.WithTTL(time.Hour)); err != nil {
		t.Fatal(err)
	}
	before, err := m.GetEntry(ctx, []byte("ttl"))
	if err != nil || before.Expiry.IsZero() {
		t.Fatalf("ttl key: %+v %v", before, err)
	}
	if _, _, _, err := m.Apply(ctx, []byte("ttl"), incr, `{"by": 1}`); err != nil {
		t.Fatal(err)
	}
	after, err := m.GetEntry(ctx, []byte("ttl"))
	if err != nil || !after.Expiry.Equal(before.Expiry) || strings.ReplaceAll(string(after.Value), " ", "") != `{"n":2}` {
		t.Fatalf("after a processor: %+v %v, want expiry %v", after, err, before.Expiry)
	}
}

// waitCaughtUp waits until every replica has applied what its leader has
// committed, so a stale job over any replica sees every write.
func waitCaughtUp(t *testing.T, c *client.Client, e *embedded) {
	t.Helper()
	retry(t, 30*time.Second, func(ctx context.Context) error {
		commit := map[int32]uint64{}
		applied := map[int32][]uint64{}
		for _, addr := range e.addrs() {
			st, err := c.NodeStatus(ctx, addr)
			if err != nil {
				return err
			}
			for _, g := range st.Groups {
				if g.State == "Leader" {
					commit[g.Partition] = g.AppliedIndex // the leader applies before it acknowledges
				}
				applied[g.Partition] = append(applied[g.Partition], g.AppliedIndex)
			}
		}
		for p, list := range applied {
			for _, a := range list {
				if a < commit[p] || commit[p] == 0 {
					return fmt.Errorf("partition %d: applied %v, leader applied %d", p, list, commit[p])
				}
			}
		}
		return nil
	})
}
