package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// TestRestoreRequestsValidated sends restore batches straight to a
// partition's leader: a bad one (checksum, partition, map, size, header) is
// refused with its error and writes nothing; a good one is applied once
// even when sent twice, keeps the CRC, and skips an entry already expired.
// ReadPartition then returns exactly what was written.
func TestRestoreRequestsValidated(t *testing.T) {
	_, c := startWithMaps(t, []string{"r"})
	const parts = 8
	key := []byte("restored-key")
	part := grid.PartitionOf("r", key, parts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// atLeader runs fn against the partition's current leader, following
	// leadership if it moves (elections, leader balancing): a refusal
	// before proposing or an ambiguous outcome is retried, which is safe
	// because a retried batch carries the same request id.
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	atLeader := func(fn func(bc gridpb.BackupClient) error) error {
		deadline := time.Now().Add(30 * time.Second)
		for {
			tb, err := c.Table(ctx)
			if err == nil {
				if n, ok := tb.Node(tb.Partitions[part].Leader); ok {
					cc, ok := conns[n.Addr]
					if !ok {
						if cc, err = grpc.NewClient(n.Addr, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
							return err
						}
						conns[n.Addr] = cc
					}
					err = gridpb.FromStatus(fn(gridpb.NewBackupClient(cc)))
					if !errors.Is(err, grid.ErrNotLeader) && !errors.Is(err, grid.ErrNoLeader) && !errors.Is(err, grid.ErrAmbiguous) {
						return err
					}
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("partition %d: no leader answered: %w", part, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	entry := func(m string, k, v []byte) *gridpb.BackupEntry {
		return &gridpb.BackupEntry{Map: m, Key: k, Value: v, Crc: replication.Checksum(v)}
	}
	// keyIn returns a key starting with prefix in partition p (or, if
	// in is false, in another one).
	keyIn := func(prefix string, in bool) []byte {
		for i := 0; ; i++ {
			k := []byte(prefix + strconv.Itoa(i))
			if (grid.PartitionOf("r", k, parts) == part) == in {
				return k
			}
		}
	}
	otherKey := keyIn("other-", false)
	badCRC := entry("r", key, []byte("v"))
	badCRC.Crc++
	big := bytes.Repeat([]byte("v"), 1<<20)
	tooMany := []*gridpb.BackupEntry{entry("r", keyIn("big-a", true), big), entry("r", keyIn("big-b", true), big)}
	// Small entries whose message fits the method's receive limit but whose
	// cost (grid.RestoreEntryCost) exceeds a batch's budget.
	var tooCostly []*gridpb.BackupEntry
	for cost := 0; cost <= grid.DefaultLimits().MaxRestoreBatch(); {
		e := entry("r", keyIn(fmt.Sprintf("small-%d-", len(tooCostly)), true), []byte("v"))
		tooCostly = append(tooCostly, e)
		cost += grid.RestoreEntryCost(e.Map, e.Key, e.Value, e.Expiry)
	}
	cases := []struct {
		name string
		req  *gridpb.RestoreRequest
		want error
	}{
		{"bad crc", &gridpb.RestoreRequest{ClientId: 1, Seq: 1, Partition: uint32(part), Entries: []*gridpb.BackupEntry{entry("r", key, []byte("ok")), badCRC}}, grid.ErrChecksum},
		{"wrong partition", &gridpb.RestoreRequest{ClientId: 1, Seq: 2, Partition: uint32(part), Entries: []*gridpb.BackupEntry{entry("r", key, []byte("ok")), entry("r", otherKey, []byte("v"))}}, grid.ErrBadRequest},
		{"unknown map", &gridpb.RestoreRequest{ClientId: 1, Seq: 3, Partition: uint32(part), Entries: []*gridpb.BackupEntry{entry("nope", key, []byte("v"))}}, grid.ErrUnknownMap},
		{"empty batch", &gridpb.RestoreRequest{ClientId: 1, Seq: 4, Partition: uint32(part)}, grid.ErrBadRequest},
		{"no client id", &gridpb.RestoreRequest{Seq: 5, Partition: uint32(part), Entries: []*gridpb.BackupEntry{entry("r", key, []byte("v"))}}, grid.ErrBadRequest},
		{"batch over the receive limit", &gridpb.RestoreRequest{ClientId: 1, Seq: 6, Partition: uint32(part), Entries: tooMany}, grid.ErrRequestTooLarge},
		{"batch over the budget", &gridpb.RestoreRequest{ClientId: 1, Seq: 8, Partition: uint32(part), Entries: tooCostly}, grid.ErrValueTooLarge},
		{"empty key", &gridpb.RestoreRequest{ClientId: 1, Seq: 7, Partition: uint32(part), Entries: []*gridpb.BackupEntry{entry("r", nil, []byte("v"))}}, grid.ErrEmptyKey},
	}
	for _, tc := range cases {
		err := atLeader(func(bc gridpb.BackupClient) error {
			_, err := bc.Restore(ctx, tc.req)
			return err
		})
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if n := countEntries(t, ctx, atLeader, part); n != 0 {
		t.Fatalf("refused batches wrote %d entries", n)
	}

	expired := entry("r", keyIn("gone-", true), []byte("old"))
	expired.Expiry = time.Now().Add(-time.Hour).UnixNano()
	good := &gridpb.RestoreRequest{ClientId: 9, Seq: 1, Partition: uint32(part), Entries: []*gridpb.BackupEntry{expired, entry("r", key, []byte("value"))}}
	for i := 0; i < 2; i++ { // a retry is applied once
		if err := atLeader(func(bc gridpb.BackupClient) error {
			_, err := bc.Restore(ctx, good)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	v, _, err := c.Map("r").Get(ctx, key)
	if err != nil || string(v) != "value" {
		t.Fatalf("restored key: %q, %v", v, err)
	}
	if n := countEntries(t, ctx, atLeader, part); n != 1 {
		t.Fatalf("partition holds %d entries after the restore, want 1 (the expired one skipped)", n)
	}
	if _, _, err := c.Map("r").Get(ctx, expired.Key); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("expired entry restored: %v", err)
	}
}

// countEntries reads a partition through ReadPartition and counts entries,
// checking the trailer.
func countEntries(t *testing.T, ctx context.Context, atLeader func(func(gridpb.BackupClient) error) error, part int) int {
	t.Helper()
	n := 0
	err := atLeader(func(bc gridpb.BackupClient) error {
		n = 0
		stream, err := bc.ReadPartition(ctx, &gridpb.ReadPartitionRequest{Partition: uint32(part)})
		if err != nil {
			return err
		}
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				return errors.New("stream ended without its trailer")
			}
			if err != nil {
				return err
			}
			n += len(r.Entries)
			if r.Done {
				if int(r.Count) != n || r.AppliedIndex == 0 {
					return fmt.Errorf("trailer: count %d applied %d, received %d", r.Count, r.AppliedIndex, n)
				}
				return nil
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
