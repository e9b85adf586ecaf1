package replication

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// waitDigest waits for host id's digest of check on group g.
func (c *testCluster) waitDigest(id string, g GroupID, check uint64) DigestResult {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if r, ok := c.hosts[id].Digest(g, check); ok && r.Done {
			return r
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no digest of check %d on %s", check, id)
	return DigestResult{}
}

func (c *testCluster) check(g GroupID, id uint64) uint64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.leader(g).Propose(ctx, &gridpb.Command{Op: &gridpb.Command_Check{Check: &gridpb.CheckOp{CheckId: id}}})
	if err != nil {
		c.t.Fatal(err)
	}
	return res.Version
}

func TestIntegrityDigestScrubQuarantine(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	const g = GroupID(0)
	var last uint64
	for i := 0; i < 20; i++ {
		last = c.putRetry(g, fmt.Sprintf("k%02d", i), fmt.Sprintf("value-%d", i), 0, 0).Version
	}
	idx := c.check(g, 1)
	if idx <= last {
		t.Fatalf("check marker at %d, after the last put at %d", idx, last)
	}
	var first DigestResult
	for i, id := range c.ids {
		d := c.waitDigest(id, g, 1)
		if d.Err != "" || d.CRCErrors != 0 || d.Index != idx || d.Entries < 20 {
			t.Fatalf("digest on %s: %+v", id, d)
		}
		if i == 0 {
			first = d
		} else if d.Digest != first.Digest {
			t.Fatalf("digest on %s %016x, on %s %016x", id, d.Digest, c.ids[0], first.Digest)
		}
	}

	// Damage one stored value on a follower, keeping its header (and CRC).
	leader, _ := c.leader(g).Leader()
	victim := c.ids[0]
	if victim == leader {
		victim = c.ids[1]
	}
	key := dataKey(g, "m", []byte("k07"))
	raw, err := c.engs[victim].Get(key)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-1] ^= 0xFF
	var b Batch
	b.Set(key, raw)
	if err := c.engs[victim].Write(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	res, err := c.hosts[victim].Scrub(context.Background(), g, func(context.Context, int) error { return nil })
	if err != nil || res.BadEntries != 1 || res.BadLogEntries != 0 {
		t.Fatalf("scrub: %+v, %v", res, err)
	}
	c.check(g, 2)
	for _, id := range c.ids {
		d := c.waitDigest(id, g, 2)
		if bad := d.Digest != first.Digest || d.CRCErrors != 0; bad != (id == victim) {
			t.Errorf("digest on %s (victim %s): %+v", id, victim, d)
		}
	}
	grp, _ := c.hosts[victim].Group(g)
	if _, _, err := grp.Get(context.Background(), "m", []byte("k07"), false); !errors.Is(err, grid.ErrChecksum) {
		t.Fatalf("read of the damaged entry: %v", err)
	}
	if _, bad := grp.Quarantined(); !bad {
		t.Fatal("the replica that failed a read is not marked corrupt")
	}
	if _, _, err := grp.Get(context.Background(), "m", []byte("k01"), false); !errors.Is(err, grid.ErrChecksum) {
		t.Fatalf("a marked replica still serves reads: %v", err)
	}

	// Quarantine survives a restart: the group is not opened again.
	if err := c.hosts[victim].Quarantine(context.Background(), g, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.hosts[victim].OpenGroup(context.Background(), g, KindData, nil); !errors.Is(err, ErrQuarantined) {
		t.Fatalf("open a quarantined group: %v", err)
	}
	// Dropping it clears the quarantine.
	if err := c.hosts[victim].RemoveGroup(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	if _, bad := c.hosts[victim].QuarantineReason(g); bad {
		t.Fatal("quarantine record survived RemoveGroup")
	}
}

func TestIntegrityApplyRefusesValueFailingItsCRC(t *testing.T) {
	c := newTestCluster(t, 3, 1)
	const g = GroupID(0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.leader(g).Propose(ctx, &gridpb.Command{Op: &gridpb.Command_Put{Put: &gridpb.PutOp{
		Map: "m", Key: []byte("k"), Value: []byte("value"), Crc: Checksum([]byte("other")),
	}}})
	if err != nil || res.Error != "CHECKSUM" {
		t.Fatalf("put with a wrong CRC: %+v, %v", res, err)
	}
	grp := c.leader(g)
	if _, bad := grp.Quarantined(); !bad {
		t.Fatal("the replica that applied a damaged entry is not marked corrupt")
	}
	if raw, err := c.engs[c.ids[0]].Get(dataKey(g, "m", []byte("k"))); err == nil {
		t.Fatalf("a value failing its CRC was stored: %q", raw)
	}
}
