package test

import (
	"bytes"
	"context"
	enc "encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	mrand "math/rand/v2"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestRestoreAtLimitWithTTLsWhilePutting sends Backup.Restore batches of
// tiny entries with a TTL, each at the node's restore limit (an entry with
// a TTL makes two engine writes and a change-log copy: such a batch once
// stopped every replica of its partition and skipped acknowledged puts),
// straight to the partition leader while puts run on the same partition.
// Every node stays up, every restored and every acknowledged key is there,
// and every replica holds the same entries. A batch over the limit is
// refused and changes nothing.
func TestRestoreAtLimitWithTTLsWhilePutting(t *testing.T) {
	const parts = 2
	lc, c := startCluster(t, parts, "r")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	limits := grid.DefaultLimits()
	expiry := time.Now().Add(time.Hour).UnixNano()

	r := newRestorer(t, lc, "r", parts, expiry)
	// batch fills one restore batch of partition 0 up to cost (in
	// grid.RestoreEntryCost units) with keys tagged tag.
	batch := func(tag string, cost int) []*gridpb.BackupEntry {
		var out []*gridpb.BackupEntry
		total := 0
		for i := 0; ; i++ {
			e := r.entry(fmt.Sprintf("%s-%06d", tag, i), []byte{byte(i)})
			if grid.PartitionOf("r", e.Key, parts) != 0 {
				continue
			}
			n := grid.RestoreEntryCost("r", e.Key, e.Value, expiry)
			if total+n > cost {
				return out
			}
			total += n
			out = append(out, e)
		}
	}
	restore := func(seq uint64, entries []*gridpb.BackupEntry) error { return r.send(ctx, seq, 0, entries) }

	over := batch("over", limits.MaxRestoreBatch()+2000)
	if err := restore(1, over); err == nil {
		t.Fatal("a restore batch over the limit was accepted")
	}

	m := c.Map("r")
	stopWriters := startWriters(ctx, m, 4, 10*time.Second)
	var restored [][]*gridpb.BackupEntry
	for i := range 3 {
		b := batch(fmt.Sprintf("b%d", i), limits.MaxRestoreBatch())
		if err := restore(uint64(10+i), b); err != nil {
			stopWriters()
			t.Fatalf("restore batch %d (%d entries): %v", i, len(b), err)
		}
		restored = append(restored, b)
	}
	time.Sleep(500 * time.Millisecond) // puts keep running after the last batch
	acked := stopWriters()

	for _, id := range lc.IDs() {
		if !lc.Running(id) {
			t.Fatalf("node %s exited", id)
		}
	}
	if len(acked) == 0 {
		t.Fatal("no put was acknowledged")
	}
	for k, v := range acked {
		got, _, err := m.Get(ctx, []byte(k))
		if err != nil || string(got) != v {
			t.Fatalf("acknowledged put %s=%s: got %q, %v", k, v, got, err)
		}
	}
	for i, b := range restored {
		for _, e := range b {
			got, _, err := m.Get(ctx, e.Key)
			if err != nil || string(got) != string(e.Value) {
				t.Fatalf("batch %d: restored key %s: got %q, %v", i, e.Key, got, err)
			}
		}
	}
	for _, e := range over {
		if _, _, err := m.Get(ctx, e.Key); !errors.Is(err, grid.ErrNotFound) {
			t.Fatalf("key %s of the refused batch: %v", e.Key, err)
		}
	}
	eventually(t, 30*time.Second, func() error { return replicasEqual(ctx, lc, parts, []string{"r"}) })
	t.Logf("%d restore batches of %d+ entries with TTLs, %d acknowledged puts, all on every replica", len(restored), len(restored[0]), len(acked))
}

// restorer sends Backup.Restore batches straight to partition leaders.
type restorer struct {
	conns  []gridpb.BackupClient
	mapN   string
	parts  int
	expiry int64
}

func newRestorer(t *testing.T, lc *localcluster.Cluster, mapName string, parts int, expiry int64) *restorer {
	t.Helper()
	r := &restorer{mapN: mapName, parts: parts, expiry: expiry}
	for _, id := range lc.IDs() {
		conn, err := grpc.NewClient(lc.Addr(id), clientCreds,
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		r.conns = append(r.conns, gridpb.NewBackupClient(conn))
	}
	return r
}

// entry is a restore entry of key with value, expiring at r.expiry.
func (r *restorer) entry(key string, value []byte) *gridpb.BackupEntry {
	return &gridpb.BackupEntry{Map: r.mapN, Key: []byte(key), Value: value,
		Crc: crc32.Checksum(value, crc32.MakeTable(crc32.Castagnoli)), Expiry: r.expiry}
}

// send offers a batch of partition part to every node until the leader
// takes it; a refusal for the batch itself comes back at once.
func (r *restorer) send(ctx context.Context, seq uint64, part int, entries []*gridpb.BackupEntry) error {
	var last error
	for attempt := 0; attempt < 100; attempt++ {
		for _, b := range r.conns {
			rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
			_, err := b.Restore(rctx, &gridpb.RestoreRequest{ClientId: 77, Seq: seq, Partition: uint32(part), Entries: entries})
			rcancel()
			if err == nil {
				return nil
			}
			last = err
			if status.Code(err) == codes.InvalidArgument || status.Code(err) == codes.ResourceExhausted {
				return err
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return last
}

// restoreAll restores n entries (key fmt.Sprintf(format, i), value
// value(i)) in batches cut at the node's restore limit, counting every
// engine write an entry makes, and returns the batch count.
func (r *restorer) restoreAll(ctx context.Context, t *testing.T, n int, format string, value func(i int) []byte) int {
	t.Helper()
	limit := grid.DefaultLimits().MaxRestoreBatch()
	pending := make([][]*gridpb.BackupEntry, r.parts)
	cost := make([]int, r.parts)
	seq, batches := uint64(1000), 0
	flush := func(p int) {
		if len(pending[p]) == 0 {
			return
		}
		seq++
		batches++
		if err := r.send(ctx, seq, p, pending[p]); err != nil {
			t.Fatalf("restore batch %d of partition %d (%d entries): %v", batches, p, len(pending[p]), err)
		}
		pending[p], cost[p] = nil, 0
	}
	for i := range n {
		e := r.entry(fmt.Sprintf(format, i), value(i))
		p := grid.PartitionOf(r.mapN, e.Key, r.parts)
		c := grid.RestoreEntryCost(e.Map, e.Key, e.Value, e.Expiry)
		if cost[p]+c > limit {
			flush(p)
		}
		pending[p] = append(pending[p], e)
		cost[p] += c
	}
	for p := range pending {
		flush(p)
	}
	return batches
}

// TestRestoreManyTinyTTLEntries restores 200 000 tiny entries with a TTL
// (each two engine writes and a change-log copy) and finds every one.
func TestRestoreManyTinyTTLEntries(t *testing.T) {
	const parts, n = 4, 200_000
	lc, c := startCluster(t, parts, "tiny")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := newRestorer(t, lc, "tiny", parts, time.Now().Add(time.Hour).UnixNano())
	batches := r.restoreAll(ctx, t, n, "t-%06d", func(i int) []byte { return []byte{byte(i), byte(i >> 8)} })
	seen := 0
	err := c.Map("tiny").Scan(ctx, nil, func(e client.Entry) error {
		var i int
		if _, err := fmt.Sscanf(string(e.Key), "t-%06d", &i); err != nil || string(e.Value) != string([]byte{byte(i), byte(i >> 8)}) {
			return fmt.Errorf("entry %q = %x", e.Key, e.Value)
		}
		seen++
		return nil
	})
	if err != nil || seen != n {
		t.Fatalf("after restoring %d entries in %d batches: scan found %d, %v", n, batches, seen, err)
	}
	for _, id := range lc.IDs() {
		if !lc.Running(id) {
			t.Fatalf("node %s exited", id)
		}
	}
	t.Logf("%d entries with a TTL restored in %d batches, all found", n, batches)
}

// TestRestoreTwoGigabytes (with -long) restores 2 GiB of incompressible
// 256 KiB values through Raft in batches cut at the restore limit, then
// reads every key back and compares it byte for byte.
func TestRestoreTwoGigabytes(t *testing.T) {
	if !*long {
		t.Skip("restores 2 GiB: run with -long")
	}
	const parts, size = 4, 256 << 10
	const n = (2 << 30) / size
	lc, c := startCluster(t, parts, "big")
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	value := func(i int) []byte {
		rng := mrand.New(mrand.NewPCG(uint64(i), 2))
		b := make([]byte, size)
		for j := 0; j < size; j += 8 {
			enc.LittleEndian.PutUint64(b[j:], rng.Uint64())
		}
		return b
	}
	start := time.Now()
	r := newRestorer(t, lc, "big", parts, 0)
	batches := r.restoreAll(ctx, t, n, "big-%05d", value)
	took := time.Since(start)
	m := c.Map("big")
	for i := range n {
		got, _, err := m.Get(ctx, []byte(fmt.Sprintf("big-%05d", i)))
		if err != nil || !bytes.Equal(got, value(i)) {
			t.Fatalf("key %d after restoring 2 GiB: %v (%d bytes)", i, err, len(got))
		}
	}
	for _, id := range lc.IDs() {
		if !lc.Running(id) {
			t.Fatalf("node %s exited", id)
		}
	}
	t.Logf("%d values of %d KiB (2 GiB) restored in %d batches in %v, every one read back equal", n, size>>10, batches, took.Round(time.Second))
}
