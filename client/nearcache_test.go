package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/client"
)

// A change stream that cannot resume (its history was compacted while it
// was away) makes the near cache drop everything it holds and follow a
// new stream; reads then fill it again.
func TestNearCacheDropsItselfWhenTheStreamFails(t *testing.T) {
	f, c := newFakeClient(t, 3, 1)
	f.MovePartition(0, 0) // the partition, and so its stream, on node 0 only
	f.mu.Lock()
	f.maps["m"] = map[string]fakeEntry{}
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := c.Map("m")
	if _, err := m.Put(ctx, []byte("k"), []byte("v1")); err != nil {
		t.Fatal(err)
	}
	nc, err := m.NearCache(ctx, client.NearCacheOptions{MaxStaleness: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := range 2 {
		v, info, err := nc.GetCached(ctx, []byte("k"))
		if err != nil || string(v) != "v1" || info.Cached != (i == 1) {
			t.Fatalf("read %d: %q %+v %v", i, v, info, err)
		}
	}
	// The partition moves to node 1 and node 0 stops: the stream resumes
	// there, past history node 1 no longer keeps.
	f.mu.Lock()
	f.watch.pruned[0] = 1000
	f.mu.Unlock()
	f.MovePartition(0, 1)
	f.Stop(0)
	deadline := time.Now().Add(20 * time.Second)
	for nc.Stats().Resets == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the cache never dropped itself: %+v", nc.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := nc.Stats(); st.Entries != 0 {
		t.Fatalf("after the stream failed the cache still holds %d entries", st.Entries)
	}
	v, info, err := nc.GetCached(ctx, []byte("k"))
	if err != nil || string(v) != "v1" || info.Cached {
		t.Fatalf("first read after the drop: %q %+v %v (want a read from the cluster)", v, info, err)
	}
}
