package replication

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A group written with large values keeps a log of about MaxLogBytes, not
// TrailingLogs + SnapshotThreshold entries of them, on every replica, and
// a replica that was away catches up (from a snapshot).
func TestRetentionBoundsLogBytes(t *testing.T) {
	timing := TestTiming()
	timing.MaxLogBytes = 1 << 20
	timing.SnapshotInterval = time.Hour // only the byte bound may snapshot
	timing.TrailingLogs, timing.SnapshotThreshold = 2048, 2048
	c := newTestClusterTiming(t, 3, 1, timing)
	c.stop("n3")
	value := strings.Repeat("x", 64<<10)
	var last uint64
	for i := 0; i < 120; i++ { // 7.5 MiB of values
		last = c.putRetry(0, fmt.Sprintf("k%03d", i), value, 9, uint64(i+1)).Version
		if i%20 == 19 {
			time.Sleep(retentionEvery) // writes spread over a few checks
		}
	}
	logBytes := func(id string) (uint64, int64) {
		g, _ := c.hosts[id].Group(0)
		first, _ := g.logs.FirstIndex()
		lastIdx, _ := g.logs.LastIndex()
		n := int64(0)
		if lastIdx >= first && first > 0 {
			n = int64(lastIdx-first+1) * int64(len(value))
		}
		return lastIdx - first + 1, n
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, id := range []string{"n1", "n2"} {
		for {
			entries, bytes := logBytes(id)
			if bytes <= timing.MaxLogBytes+2*int64(len(value)) {
				t.Logf("%s: %d entries (~%d KiB of values) in its log after %d puts of 64 KiB", id, entries, bytes>>10, 120)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s keeps %d entries (~%d KiB) against a %d KiB budget", id, entries, bytes>>10, timing.MaxLogBytes>>10)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	c.start("n3")
	c.waitApplied("n3", 0, last)
	if v, ok := c.staleGet("n3", 0, "k000"); !ok || v != value {
		t.Fatal("the replica that was away lacks k000 after catching up")
	}
}
