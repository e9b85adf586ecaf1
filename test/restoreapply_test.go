package test

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
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

	var conns []gridpb.BackupClient
	for _, id := range lc.IDs() {
		conn, err := grpc.NewClient(lc.Addr(id), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns = append(conns, gridpb.NewBackupClient(conn))
	}
	// batch fills one restore batch of partition 0 up to cost (in
	// grid.RestoreEntryCost units) with keys tagged tag.
	batch := func(tag string, cost int) []*gridpb.BackupEntry {
		var out []*gridpb.BackupEntry
		total := 0
		for i := 0; ; i++ {
			k := []byte(fmt.Sprintf("%s-%06d", tag, i))
			if grid.PartitionOf("r", k, parts) != 0 {
				continue
			}
			v := []byte{byte(i)}
			n := grid.RestoreEntryCost("r", k, v, expiry)
			if total+n > cost {
				return out
			}
			total += n
			out = append(out, &gridpb.BackupEntry{Map: "r", Key: k, Value: v, Crc: crc32.Checksum(v, crc32.MakeTable(crc32.Castagnoli)), Expiry: expiry})
		}
	}
	restore := func(seq uint64, entries []*gridpb.BackupEntry) error {
		var last error
		for attempt := 0; attempt < 100; attempt++ {
			for _, b := range conns {
				rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
				_, err := b.Restore(rctx, &gridpb.RestoreRequest{ClientId: 77, Seq: seq, Partition: 0, Entries: entries})
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
