package replication

import (
	"bytes"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// Fuzz targets for every decoder that reads bytes a disk or a peer handed
// over. `go test -fuzz FuzzX ./replication` explores; the seeds in
// testdata/fuzz run with every `go test`.

func FuzzDecodeLog(f *testing.F) {
	f.Add(encodeLog(&raft.Log{Index: 7, Term: 2, Type: raft.LogCommand, Data: []byte("cmd"), Extensions: []byte("x"), AppendedAt: time.Unix(1, 2)}))
	f.Add(encodeLog(&raft.Log{Index: 1, Term: 1, Type: raft.LogNoop}))
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, rec []byte) {
		var l raft.Log
		if err := decodeLog(rec, &l); err != nil {
			return
		}
		// Whatever decodes re-encodes to the same record.
		if again := encodeLog(&l); !bytes.Equal(again, rec) {
			t.Fatalf("record %x decoded as %+v, which encodes as %x", rec, l, again)
		}
	})
}

func FuzzDecodeIntentOp(f *testing.F) {
	f.Add(encodeIntentOp(Op{Key: []byte("k"), Value: []byte("v")}))
	f.Add(encodeIntentOp(Op{Key: []byte("key"), Delete: true}))
	f.Add([]byte{2, 0, 0, 0, 9})
	f.Fuzz(func(t *testing.T, rec []byte) {
		op, err := decodeIntentOp(rec)
		if err != nil {
			return
		}
		if op.Delete && len(op.Value) > 0 {
			t.Fatalf("a delete with a value from %x", rec)
		}
		if again := encodeIntentOp(op); !op.Delete && !bytes.Equal(again, rec) {
			t.Fatalf("record %x decoded as %+v, which encodes as %x", rec, op, again)
		}
	})
}

func FuzzDecodeEntry(f *testing.F) {
	v := []byte(`{"a":1}`)
	f.Add(encodeEntry(StoredEntry{Version: 3, Expiry: 99, CRC: Checksum(v), Value: v}))
	f.Add([]byte{entryFormat})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := decodeEntry(b)
		if err != nil {
			return
		}
		if Checksum(e.Value) != e.CRC || !bytes.Equal(encodeEntry(e), b) {
			t.Fatalf("entry %x decoded as %+v", b, e)
		}
	})
}

// fuzzSM is a data partition's state machine over a real engine, shared by
// every input of one fuzz run (opening an engine per input is too slow).
func fuzzSM(f *testing.F) (*stateMachine, Engine) {
	eng, err := OpenEngine(EngineConfig{Dir: f.TempDir(), Profile: "small"})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { eng.Close() })
	app, err := newKVApplier(3, eng, WatchRetention{}, newChecks(), &corruption{})
	if err != nil {
		f.Fatal(err)
	}
	sm, err := newStateMachine(3, eng, app, slog.New(slog.DiscardHandler), func(err error) {
		panic("fatal on fuzzed input: " + err.Error())
	})
	if err != nil {
		f.Fatal(err)
	}
	return sm, eng
}

// A committed command that is garbage or nonsense is answered with an
// error or a refusal; it never stops the state machine.
func FuzzApplyCommand(f *testing.F) {
	for _, c := range []*gridpb.Command{
		putCmd(1, "k", "v", time.Second),
		{Op: &gridpb.Command_Delete{Delete: &gridpb.DeleteOp{Map: "m", Key: []byte("k")}}},
		{Op: &gridpb.Command_Cas{Cas: &gridpb.CasOp{Map: "m", Key: []byte("k"), ExpectedVersion: 1, Value: []byte("w")}}},
		{Op: &gridpb.Command_Txn{Txn: &gridpb.TxnOp{Map: "m", ThenOps: []*gridpb.TxnWrite{{Key: []byte("a"), Value: []byte("b")}}}}},
		{Op: &gridpb.Command_Expire{Expire: &gridpb.ExpireOp{Keys: []*gridpb.ExpiredKey{{Map: "m", Key: []byte("k"), Version: 1, Expiry: 5}}}}},
		{Op: &gridpb.Command_Restore{Restore: &gridpb.RestoreOp{Entries: []*gridpb.BackupEntry{{Map: "m", Key: []byte("r"), Value: []byte("v"), Crc: Checksum([]byte("v"))}}}}},
	} {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	sm, _ := fuzzSM(f)
	index := uint64(0)
	f.Fuzz(func(t *testing.T, data []byte) {
		index++
		out := sm.ApplyBatch([]*raft.Log{{Index: index, Type: raft.LogCommand, Data: data}})
		if _, ok := out[0].(applyResult); !ok {
			t.Fatalf("apply answered %T", out[0])
		}
		if sm.Applied() != index {
			t.Fatalf("applied %d after entry %d", sm.Applied(), index)
		}
	})
}

// A snapshot stream that fails its checks is refused with an error.
func FuzzRestoreSnapshot(f *testing.F) {
	src, _ := fuzzSM(f)
	src.ApplyBatch([]*raft.Log{{Index: 1, Type: raft.LogCommand, Data: mustMarshal(f, putCmd(1, "k", "v", 0))}})
	snap, err := src.Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	var good bytes.Buffer
	if err := snap.(*fsmSnapshot).write(&good); err != nil {
		f.Fatal(err)
	}
	snap.Release()
	f.Add(good.Bytes())
	f.Add(snapshotMagic)
	dst, _ := fuzzSM(f)
	f.Fuzz(func(t *testing.T, stream []byte) {
		err := dst.Restore(io.NopCloser(bytes.NewReader(stream)))
		if err == nil && !bytes.HasPrefix(stream, snapshotMagic) {
			t.Fatalf("a stream without the header was restored")
		}
	})
}

func mustMarshal(f *testing.F, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
