package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/query"
)

func TestRecordGen(t *testing.T) {
	g := recordGen{seed: 7, size: 100, shops: 5}
	for i := range uint64(500) {
		region, shop, amount, v := g.record(i)
		if len(v) != 100 {
			t.Fatalf("record %d is %d bytes, want 100: %s", i, len(v), v)
		}
		var s sale
		if err := json.Unmarshal(v, &s); err != nil {
			t.Fatalf("record %d is not JSON: %v: %s", i, err, v)
		}
		if s != (sale{region, shop, amount}) {
			t.Fatalf("record %d decodes to %+v, generated as %s %s %d", i, s, region, shop, amount)
		}
		if _, _, _, again := g.record(i); !bytes.Equal(again, v) {
			t.Fatalf("record %d differs when made again", i)
		}
	}
}

// The client-side aggregate and the query engine's job (the code the nodes
// run) give the same sums on the same records, and a difference in a job's
// result is caught.
func TestClientAggregateEqualsJob(t *testing.T) {
	const n, parts = 3000, 4
	g := recordGen{seed: 3, size: 100, shops: 20}
	prog, err := query.Compile(query.Job{Map: benchMap, Filter: aggFilter, Agg: aggExpr}, query.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	byPart := make([][][2][]byte, parts)
	truth, clientSide := newAggregate(), newAggregate()
	for i := range uint64(n) {
		k := g.key(i)
		region, shop, amount, v := g.record(i)
		truth.addFields(region, shop, amount)
		if err := clientSide.addJSON(v); err != nil {
			t.Fatal(err)
		}
		p := grid.PartitionOf(benchMap, k, parts)
		byPart[p] = append(byPart[p], [2][]byte{k, v})
	}
	var merged *query.Partial
	for _, kvs := range byPart {
		part, _, err := prog.RunTask(context.Background(), func(fn func(key, value []byte) error) error {
			for _, kv := range kvs {
				if err := fn(kv[0], kv[1]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if merged == nil {
			merged = part
		} else if err := prog.Merge(merged, part); err != nil {
			t.Fatal(err)
		}
	}
	res, err := prog.Finalize(context.Background(), merged)
	if err != nil {
		t.Fatal(err)
	}
	var groups []client.JobGroup
	for _, gr := range res.Groups {
		groups = append(groups, client.JobGroup{Key: gr.Key, Value: gr.Value})
	}
	jobSums, err := groupsToSums(groups)
	if err != nil {
		t.Fatal(err)
	}
	if len(jobSums) != 20 || clientSide.records != n {
		t.Fatalf("%d groups from the job, %d records at the client; want 20 and %d", len(jobSums), clientSide.records, n)
	}
	if d := diffSums("truth", truth.sums, "client", clientSide.sums); len(d) > 0 {
		t.Fatalf("client-side aggregate differs from the generated fields: %v", d)
	}
	if d := diffSums("job", jobSums, "client", clientSide.sums); len(d) > 0 {
		t.Fatalf("job differs from the client-side aggregate: %v", d)
	}

	// Each kind of difference is reported.
	jobSums["s3"]++
	delete(jobSums, "s4")
	jobSums["s99"] = 1
	d := diffSums("job", jobSums, "client", clientSide.sums)
	if len(d) != 3 {
		t.Fatalf("got %d differences, want 3: %v", len(d), d)
	}
	if err := errMismatch("job vs client", d); !strings.Contains(err.Error(), "RESULTS DIFFER") || !strings.Contains(err.Error(), `"s99"`) {
		t.Errorf("mismatch error does not say what differs: %v", err)
	}
	if _, err := groupsToSums([]client.JobGroup{{Key: "s1", Value: 1.5}}); err == nil {
		t.Error("a float sum was accepted as exact")
	}
}

// A delayed connection delivers every byte, in order, counted once each
// way, and Close stops it.
func TestDelayedConnEcho(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	w := &wire{delay: time.Millisecond}
	c, err := w.dial(context.Background(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 20_000) // 320 kB, many chunks
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < len(msg); i += 1000 {
			if _, err := c.Write(msg[i:min(i+1000, len(msg))]); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echoed bytes differ")
	}
	if cnt := w.count(); cnt.Sent != int64(len(msg)) || cnt.Recv != int64(len(msg)) {
		t.Errorf("counted %+v, want %d each way", cnt, len(msg))
	}
	if err := c.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read after close succeeded")
	}
}

// The whole benchmark on a few thousand records, against real node
// processes: both methods run and their results agree (the driver fails
// if they do not).
func TestComputeSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds zerogrid and starts three nodes")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build zerogrid with")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, log bytes.Buffer
	err := run(ctx, []string{"-compute", "-netns=false", "-records", "3000", "-runs", "1", "-dir", t.TempDir()}, &out, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	for _, want := range []string{"| loopback | job |", "| loopback | scan |", "all equal"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
