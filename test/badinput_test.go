package test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/replication"
)

// TestBadInputChangesNothing sends every kind of bad request straight to a
// node (past the client's own checks) and through the client, and checks
// each gets its error and leaves the data unchanged.
func TestBadInputChangesNothing(t *testing.T) {
	lc, c := startCluster(t, 4, "good")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := c.Map("good")
	eventually(t, 30*time.Second, func() error {
		_, err := m.Put(ctx, []byte("k"), []byte("original"))
		return err
	})

	conn, err := grpc.NewClient(lc.Addrs()[0], clientCreds,
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(256<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := gridpb.NewKVClient(conn)
	hdr := func(m string) *gridpb.WriteHeader { return &gridpb.WriteHeader{Map: m, ClientId: 1, Seq: 1} }
	bigKey := bytes.Repeat([]byte("k"), 4<<10+1)
	bigValue := bytes.Repeat([]byte("v"), 1<<20+1)

	cases := []struct {
		name string
		call func() error
		want error
		code codes.Code
	}{
		{"empty key", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("good"), Key: nil, Value: []byte("x")})
			return err
		}, grid.ErrEmptyKey, codes.InvalidArgument},
		{"key over 4 KiB", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("good"), Key: bigKey, Value: []byte("x")})
			return err
		}, grid.ErrKeyTooLarge, codes.InvalidArgument},
		{"value over 1 MiB", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("good"), Key: []byte("k"), Value: bigValue})
			return err
		}, grid.ErrValueTooLarge, codes.InvalidArgument},
		{"cas value over 1 MiB", func() error {
			_, err := kv.CompareAndSwap(ctx, &gridpb.CompareAndSwapRequest{Header: hdr("good"), Key: []byte("k"), ExpectedVersion: 0, Value: bigValue})
			return err
		}, grid.ErrValueTooLarge, codes.InvalidArgument},
		{"unknown map", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("nosuchmap"), Key: []byte("k"), Value: []byte("x")})
			return err
		}, grid.ErrUnknownMap, codes.NotFound},
		{"invalid map name", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("bad name!"), Key: []byte("k"), Value: []byte("x")})
			return err
		}, grid.ErrInvalidMapName, codes.InvalidArgument},
		{"missing write header", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Key: []byte("k"), Value: []byte("x")})
			return err
		}, grid.ErrBadRequest, codes.InvalidArgument},
		{"wrong checksum", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("good"), Key: []byte("k"), Value: []byte("evil"), Crc: 1})
			return err
		}, grid.ErrChecksum, codes.DataLoss},
		{"delete with empty key", func() error {
			_, err := kv.Delete(ctx, &gridpb.DeleteRequest{Header: hdr("good")})
			return err
		}, grid.ErrEmptyKey, codes.InvalidArgument},
		{"compare-and-delete with a value", func() error {
			_, err := kv.CompareAndSwap(ctx, &gridpb.CompareAndSwapRequest{Header: hdr("good"), Key: []byte("k"), Delete: true, Value: []byte("x")})
			return err
		}, grid.ErrBadRequest, codes.InvalidArgument},
		{"scan of a partition out of range", func() error {
			s, err := kv.Scan(ctx, &gridpb.ScanRequest{Map: "good", Partition: 99})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, grid.ErrBadPartition, codes.InvalidArgument},
		{"oversized message (over the put's receive limit)", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("good"), Key: []byte("k"), Value: bytes.Repeat([]byte("x"), 2<<20)})
			return err
		}, grid.ErrRequestTooLarge, codes.ResourceExhausted},
		{"oversized message (over the services' server's receive limit, refused before it is read)", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("good"), Key: []byte("k"), Value: bytes.Repeat([]byte("x"), 8<<20)})
			return err
		}, nil, codes.ResourceExhausted},
		{"oversized message (over Raft's receive limit)", func() error {
			_, err := kv.Put(ctx, &gridpb.PutRequest{Header: hdr("good"), Key: []byte("k"), Value: bytes.Repeat([]byte("x"), replication.MaxRaftMessageBytes+1)})
			return err
		}, nil, codes.ResourceExhausted},
		{"transaction over two partitions", func() error {
			var other []byte
			for i := 0; other == nil; i++ {
				k := []byte(fmt.Sprintf("x%d", i))
				if grid.PartitionOf("good", k, 4) != grid.PartitionOf("good", []byte("k"), 4) {
					other = k
				}
			}
			_, err := kv.Txn(ctx, &gridpb.TxnRequest{Header: hdr("good"), ThenOps: []*gridpb.TxnWrite{
				{Key: []byte("k"), Value: []byte("evil")}, {Key: other, Value: []byte("evil")}}})
			return err
		}, grid.ErrBadRequest, codes.InvalidArgument},
		{"empty transaction", func() error {
			_, err := kv.Txn(ctx, &gridpb.TxnRequest{Header: hdr("good")})
			return err
		}, grid.ErrBadRequest, codes.InvalidArgument},
		{"get from unknown map", func() error {
			_, err := kv.Get(ctx, &gridpb.GetRequest{Map: "nosuchmap", Key: []byte("k")})
			return err
		}, grid.ErrUnknownMap, codes.NotFound},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			err := tc.call()
			if err == nil || err == io.EOF {
				t.Fatalf("accepted; want %v", tc.want)
			}
			if got := status.Code(err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, err, tc.code)
			}
			if tc.want != nil && !errors.Is(gridpb.FromStatus(err), tc.want) {
				t.Fatalf("error %v does not match %v", err, tc.want)
			}
		})
	}

	// The client refuses the same input before sending, with the same errors.
	clientCases := []struct {
		name string
		err  error
		want error
	}{
		{"empty key", func() error { _, err := m.Put(ctx, nil, []byte("x")); return err }(), grid.ErrEmptyKey},
		{"big key", func() error { _, err := m.Put(ctx, bigKey, []byte("x")); return err }(), grid.ErrKeyTooLarge},
		{"big value", func() error { _, err := m.Put(ctx, []byte("k"), bigValue); return err }(), grid.ErrValueTooLarge},
		{"unknown map", func() error { _, err := c.Map("nosuchmap").Put(ctx, []byte("k"), []byte("x")); return err }(), grid.ErrUnknownMap},
		{"bad map name", func() error { _, err := c.Map("bad name!").Put(ctx, []byte("k"), []byte("x")); return err }(), grid.ErrInvalidMapName},
	}
	for _, cc := range clientCases {
		if !errors.Is(cc.err, cc.want) {
			t.Errorf("client %s: %v, want %v", cc.name, cc.err, cc.want)
		}
	}

	// Nothing changed: the original value and version are intact, and the
	// unknown map was not created.
	v, _, err := m.Get(ctx, []byte("k"))
	if err != nil || string(v) != "original" {
		t.Fatalf("after bad input k = %q, %v; want original", v, err)
	}
	n := 0
	if err := m.Scan(ctx, nil, func(client.Entry) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("after bad input the map holds %d entries (%v), want 1", n, err)
	}
	names, err := c.ListMaps(ctx)
	if err != nil || len(names) != 1 || names[0] != "good" {
		t.Fatalf("maps after bad input = %v, %v", names, err)
	}
}
