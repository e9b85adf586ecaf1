//go:build !arm

package replication

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestEngineBadger(t *testing.T) {
	runEngineContract(t, func(t *testing.T, dir string) Engine {
		t.Helper()
		e, err := OpenEngine(EngineConfig{Dir: dir, Kind: "badger", SyncWrites: true})
		if err != nil {
			t.Fatalf("open badger engine: %v", err)
		}
		if got := e.Stats().Kind; got != "badger" {
			t.Fatalf("Stats().Kind = %q, want badger", got)
		}
		return e
	})
}

// An engine must not open over the other engine's data: it would start empty
// and the node would silently lose the partition state.
func TestEngineRefusesOtherKindsDir(t *testing.T) {
	for _, tc := range []struct{ first, second string }{{"bbolt", "badger"}, {"badger", "bbolt"}} {
		dir := t.TempDir()
		e, err := OpenEngine(EngineConfig{Dir: dir, Kind: tc.first})
		if err != nil {
			t.Fatal(err)
		}
		write(t, e, set("k", "v"))
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		e, err = OpenEngine(EngineConfig{Dir: dir, Kind: tc.second})
		if err == nil {
			e.Close()
			t.Fatalf("%s opened over a %s directory", tc.second, tc.first)
		}
		if !errors.Is(err, errEngineConfig) {
			t.Fatalf("%s over %s: %v, want errEngineConfig", tc.second, tc.first, err)
		}
	}
}

func TestEngineBadgerDefaultProfile(t *testing.T) {
	e, err := OpenEngine(EngineConfig{Dir: t.TempDir(), Kind: "badger", Profile: "default"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	write(t, e, set("k", "v"))
	mustGet(t, e, "k", "v")
	if e.MaxBatchBytes() <= 1152<<10 {
		t.Fatalf("default profile MaxBatchBytes %d, want more than the small profile's", e.MaxBatchBytes())
	}
}

// Badger caps a transaction's entries as well as its bytes. Every batch
// within MaxBatchBytes (however tiny its ops) must fit the entry cap, and
// Write must still refuse past the cap with ErrBatchTooLarge.
func TestEngineBadgerOpCap(t *testing.T) {
	e, err := openBadgerEngine(EngineConfig{Dir: t.TempDir(), Profile: "small", SyncWrites: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	b := &Batch{}
	for i := 0; ; i++ {
		k := fmt.Appendf(nil, "%06d", i)
		if b.Size()+len(k)+opOverhead > e.MaxBatchBytes() {
			break
		}
		b.Set(k, nil)
	}
	if b.Len() > e.maxOps {
		t.Fatalf("%d tiny ops fit MaxBatchBytes but badger takes only %d", b.Len(), e.maxOps)
	}
	if err := e.Write(context.Background(), b); err != nil {
		t.Fatalf("Write of the fullest batch (%d ops, %d bytes): %v", b.Len(), b.Size(), err)
	}
	over := &Batch{}
	for i := 0; i <= e.maxOps; i++ {
		over.Ops = append(over.Ops, Op{Key: fmt.Appendf(nil, "x%06d", i)})
	}
	if err := e.Write(context.Background(), over); !errors.Is(err, ErrBatchTooLarge) {
		t.Fatalf("Write of %d ops (cap %d) = %v, want ErrBatchTooLarge", over.Len(), e.maxOps, err)
	}
}
