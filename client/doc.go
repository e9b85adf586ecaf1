// Package client is the Go client of a zerogrid cluster.
//
// Dial fetches the partition table from any reachable node and keeps one gRPC
// connection per node. A Map names a keyspace; each call on it hashes the key
// to its partition (grid.PartitionOf, so keys sharing a {hash tag} share a
// partition) and goes straight to that partition's leader, as far as the
// client knows it. The client follows the NotLeader hints nodes give back,
// skips unreachable replicas with jittered exponential backoff, and refetches
// the table when a node says it no longer holds a partition.
//
// Writes carry a (client id, sequence) pair that stays the same across every
// retry of one logical write, and the node applies each pair at most once, so
// retrying after a lost reply cannot apply a write twice. When retries run out
// and some attempt may have reached the leader, the error matches ErrAmbiguous:
// the write may or may not have happened, and only a read can tell.
//
// Input is checked against the cluster's limits before anything is sent, and
// every value read is checked against the CRC32C the node stored with it.
//
//	c, err := client.Dial(ctx, "10.0.0.1:7000", "10.0.0.2:7000")
//	...
//	defer c.Close()
//	users := c.Map("users")
//	version, err := users.Put(ctx, []byte("ada"), []byte(`{"born":1815}`))
//	value, version, err := users.Get(ctx, []byte("ada"))
//
// Lock and TryLock take a distributed lock held by a lease the handle renews;
// each grant carries a fencing token that only grows, and WithFence makes a
// Put that the key's partition refuses (ErrStaleToken) once it has accepted
// a higher token for that fence. See Lock for what is and is not guaranteed.
//
// WithTTL makes a written key expire; Watch and WatchFrom stream a map's
// changes, exactly once and in order per partition, resuming across node
// failures from a per-partition Cursor (see Watcher for what is
// guaranteed).
//
// A Client is safe for concurrent use by many goroutines.
package client
