//go:build !arm

package replication

import (
	"errors"
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
	if e.MaxBatchBytes() <= 2<<20 {
		t.Fatalf("default profile MaxBatchBytes %d, want more than the small profile's", e.MaxBatchBytes())
	}
}
