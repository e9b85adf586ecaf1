package node_test

import (
	"bytes"
	"context"
	"errors"
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
	var leaderAddr string
	retry(t, 20*time.Second, func(ctx context.Context) error {
		tb, err := c.Table(ctx)
		if err != nil {
			return err
		}
		n, ok := tb.Node(tb.Partitions[part].Leader)
		if !ok {
			return errors.New("no leader yet")
		}
		leaderAddr = n.Addr
		return nil
	})
	conn, err := grpc.NewClient(leaderAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	bc := gridpb.NewBackupClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

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
		{"batch over the limit", &gridpb.RestoreRequest{ClientId: 1, Seq: 6, Partition: uint32(part), Entries: tooMany}, grid.ErrValueTooLarge},
		{"empty key", &gridpb.RestoreRequest{ClientId: 1, Seq: 7, Partition: uint32(part), Entries: []*gridpb.BackupEntry{entry("r", nil, []byte("v"))}}, grid.ErrEmptyKey},
	}
	for _, tc := range cases {
		_, err := bc.Restore(ctx, tc.req)
		if err = gridpb.FromStatus(err); !errors.Is(err, tc.want) {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if n := countEntries(t, ctx, bc, part); n != 0 {
		t.Fatalf("refused batches wrote %d entries", n)
	}

	expired := entry("r", keyIn("gone-", true), []byte("old"))
	expired.Expiry = time.Now().Add(-time.Hour).UnixNano()
	good := &gridpb.RestoreRequest{ClientId: 9, Seq: 1, Partition: uint32(part), Entries: []*gridpb.BackupEntry{expired, entry("r", key, []byte("value"))}}
	for i := 0; i < 2; i++ { // a retry is applied once
		if _, err := bc.Restore(ctx, good); err != nil {
			t.Fatal(err)
		}
	}
	v, _, err := c.Map("r").Get(ctx, key)
	if err != nil || string(v) != "value" {
		t.Fatalf("restored key: %q, %v", v, err)
	}
	if n := countEntries(t, ctx, bc, part); n != 1 {
		t.Fatalf("partition holds %d entries after the restore, want 1 (the expired one skipped)", n)
	}
	if _, _, err := c.Map("r").Get(ctx, expired.Key); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("expired entry restored: %v", err)
	}
}

// countEntries reads a partition through ReadPartition and counts entries,
// checking the trailer.
func countEntries(t *testing.T, ctx context.Context, bc gridpb.BackupClient, part int) int {
	t.Helper()
	stream, err := bc.ReadPartition(ctx, &gridpb.ReadPartitionRequest{Partition: uint32(part)})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			t.Fatal("stream ended without its trailer")
		}
		if err != nil {
			t.Fatal(err)
		}
		n += len(r.Entries)
		if r.Done {
			if int(r.Count) != n || r.AppliedIndex == 0 {
				t.Fatalf("trailer: count %d applied %d, received %d", r.Count, r.AppliedIndex, n)
			}
			return n
		}
	}
}
