package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestCorruptionInjection stops one replica, flips bytes in its engine files
// (inside stored values) and in its Raft log (inside values of one
// partition's log entries), restarts it, and
// checks that reads never return a damaged value, that `check` names the
// replica, and that it is repaired.
func TestCorruptionInjection(t *testing.T) {
	const parts = 8
	const victim = "n3"
	// Scrubs start 5 s after a node starts: the first check below runs
	// before the victim's scrub, so it is the check that finds the damage.
	lc, c := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: parts, Replicas: 3,
		ExtraArgs: []string{"--scrub-interval", "5s"}}, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	m := c.Map("kv")

	// Keys by partition; values random (incompressible), so the engine
	// stores them verbatim and they can be found on disk.
	byPart := map[int][]string{}
	want := map[string][]byte{}
	for i := 0; len(want) < 200; i++ {
		k := fmt.Sprintf("key-%04d", i)
		v := make([]byte, 96)
		rand.Read(v)
		if _, err := m.Put(ctx, []byte(k), v); err != nil {
			t.Fatal(err)
		}
		want[k] = v
		p := grid.PartitionOf("kv", []byte(k), parts)
		byPart[p] = append(byPart[p], k)
	}
	// Partitions 0 and 1: values flipped in the engine; 2: in the node's
	// shared Raft log (each record carries a CRC32C, so only p2 is blamed).
	engineKeys := append(append([]string(nil), byPart[0][:3]...), byPart[1][:2]...)
	logKeys := byPart[2][:3]
	eventually(t, 30*time.Second, func() error { return replicasEqual(ctx, lc, parts, []string{"kv"}) })

	if err := lc.Terminate(victim); err != nil {
		t.Fatal(err)
	}
	dir := lc.DataDir(victim)
	// A value is on disk more than once: as the stored data entry, in the
	// partition's change log (for watches), and possibly in badger's
	// memtable write-ahead log (*.mem). Damage the data path can see is in
	// a stored entry outside the write-ahead log: badger guards that log
	// with its own per-entry checksum (on replay it drops the log from the
	// damaged entry on, and the Raft log applies those entries again).
	// Flips that hit only other copies are counted apart.
	injectedEngine, injectedElsewhere := 0, 0
	for _, k := range engineKeys {
		files := flipAll(t, filepath.Join(dir, "engine"), want[k])
		if len(files) == 0 {
			t.Logf("engine: value of %q not found on disk", k)
			continue
		}
		injectedEngine++
		if !slices.ContainsFunc(files, func(f string) bool { return strings.HasSuffix(f, "+entry") && !strings.Contains(f, ".mem") }) {
			injectedElsewhere++
		}
		t.Logf("engine: %q flipped in %v", k, files)
	}
	injectedLog := 0
	for _, k := range logKeys {
		if len(flipAll(t, filepath.Join(dir, "raft"), want[k])) > 0 {
			injectedLog++
		}
	}
	if injectedEngine == 0 || injectedLog == 0 {
		t.Fatalf("injected %d engine and %d log flips: nothing to detect", injectedEngine, injectedLog)
	}
	if err := lc.StartNode(ctx, victim); err != nil {
		t.Fatal(err)
	}

	// 1. The check names the victim for every partition whose values were
	// flipped in its engine, with the damaged entries counted.
	crcFound := uint64(0)
	eventually(t, 30*time.Second, func() error {
		rep, err := c.Check(ctx, client.NoRepair(), client.CheckPartitions(0, 1))
		if err != nil {
			return err
		}
		crcFound = 0
		for _, p := range rep.Partitions {
			if !slices.Contains(p.Differing, victim) {
				return fmt.Errorf("partition %d: check does not name %s: %+v", p.Partition, victim, p)
			}
			for _, d := range p.Replicas {
				if d.Node == victim {
					crcFound += d.CRCErrors
				}
			}
		}
		return nil
	})
	t.Logf("check named %s in partitions 0 and 1, %d entries failing their CRC32C", victim, crcFound)

	// 2. Reads never return a damaged value: stale reads served by the
	// victim itself (its own replica, no client-side check) and
	// linearizable and stale reads through the client.
	conn, err := grpc.NewClient(lc.Addr(victim), clientCreds)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kv := gridpb.NewKVClient(conn)
	refused, behind := 0, 0
	for _, k := range append(append([]string(nil), engineKeys...), logKeys...) {
		r, err := kv.Get(ctx, &gridpb.GetRequest{Map: "kv", Key: []byte(k), Consistency: gridpb.Consistency_STALE})
		switch {
		case err != nil:
			refused++
		case !r.Found:
			// The damaged replica may already be rebuilding from its leader
			// (it starts empty): a stale read then shows an earlier state
			// of the log, which stale reads allow (the applied index says
			// how far it is); what must never come back is a damaged value.
			behind++
			t.Logf("stale read of %q on %s: not found at applied index %d (a replica being rebuilt)", k, victim, r.AppliedIndex)
		case !bytes.Equal(r.Value, want[k]):
			t.Errorf("stale read of %q on %s returned a wrong value", k, victim)
		}
		for _, opts := range [][]client.ReadOption{nil, {client.Stale()}} {
			v, _, err := m.Get(ctx, []byte(k), opts...)
			if err == nil && !bytes.Equal(v, want[k]) {
				t.Errorf("read of %q (%d options) returned a wrong value", k, len(opts))
			}
			if err != nil && !errors.Is(err, client.ErrChecksum) {
				t.Logf("read of %q: %v", k, err)
			}
		}
	}
	t.Logf("stale reads on %s: %d of %d refused, %d behind (rebuilding), none wrong", victim, refused, len(engineKeys)+len(logKeys), behind)

	// 3. Repair: the check quarantines what differs, the scrub finds the
	// damaged log, and the cluster rebuilds the victim's replicas.
	if _, err := c.Check(ctx); err != nil {
		t.Fatal(err)
	}
	var stats *gridpb.IntegrityStats
	eventually(t, 90*time.Second, func() error {
		st, err := c.NodeStatus(ctx, lc.Addr(victim))
		if err != nil {
			return err
		}
		stats = st.Integrity
		if len(stats.Quarantined) > 0 || stats.Rebuilds < 3 {
			return fmt.Errorf("victim integrity: %+v", stats)
		}
		rep, err := c.Check(ctx, client.NoRepair())
		if err != nil {
			return err
		}
		if !rep.Clean() {
			return fmt.Errorf("check not clean yet: %+v", rep)
		}
		return replicasEqual(ctx, lc, parts, []string{"kv"})
	})
	for k, v := range want {
		got, _, err := m.Get(ctx, []byte(k))
		if err != nil || !bytes.Equal(got, v) {
			t.Fatalf("after repair, %q: %v", k, err)
		}
	}
	// The damaged log records fail their CRC32C when p2 opens: that replica
	// alone is quarantined (and rebuilt, above).
	logText, _ := os.ReadFile(lc.LogPath(victim))
	if !regexp.MustCompile(`partition replica quarantined.*group=p2 .*raft log entry \d+:.*CRC32C`).Match(logText) {
		t.Errorf("the damaged raft log records of p2 were not reported")
	}
	t.Logf("detection: engine %d/%d keys (%d with no stored data entry hit: only the change log or badger's write-ahead log; "+
		"check: %d CRC errors, quarantine scan: %d), raft log records of %d keys flipped, p2 quarantined at open; "+
		"quarantines %d, rebuilds %d",
		min(int(crcFound), injectedEngine), injectedEngine, injectedElsewhere, crcFound, stats.CorruptEntries, injectedLog,
		stats.Quarantines, stats.Rebuilds)
	if crcFound < uint64(injectedEngine-injectedElsewhere) || crcFound > uint64(injectedEngine) {
		t.Errorf("detected %d of %d engine injections (%d of them with no stored data entry hit)",
			crcFound, injectedEngine, injectedElsewhere)
	}
}

// flipAll inverts one byte in the middle of every occurrence of value in
// the files under dir, and returns the files it flipped bytes in, one entry
// per occurrence; an occurrence right after the value's CRC32C (big
// endian: the stored data entry's header ends with it) is marked "+entry".
func flipAll(t *testing.T, dir string, value []byte) []string {
	t.Helper()
	sum := crc32.Checksum(value, crc32.MakeTable(crc32.Castagnoli))
	crc := [4]byte{byte(sum >> 24), byte(sum >> 16), byte(sum >> 8), byte(sum)}
	var n []string
	err := filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		changed := false
		for off := 0; ; {
			i := bytes.Index(b[off:], value)
			if i < 0 {
				break
			}
			b[off+i+len(value)/2] ^= 0xFF
			name := filepath.Base(path)
			if at := off + i; at >= 4 && bytes.Equal(b[at-4:at], crc[:]) {
				name += "+entry"
			}
			off += i + len(value)
			n = append(n, name)
			changed = true
		}
		if changed {
			return os.WriteFile(path, b, info.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
