// Package replication is zerogrid's multi-Raft layer. A Host runs one
// hashicorp/raft group per partition plus the metadata group, all sharing the
// node's storage engine (badger, or bbolt on 32-bit ARM, behind Engine) and
// one transport (GRPCTransport multiplexes every group over one gRPC server
// and one connection per peer; InmemNetwork does the same in memory for
// tests). Every group's Raft log and stable state live in one append-only
// log of segment files per node (logDB): a single committer writes the
// records of all groups waiting at that moment with one write and one
// fdatasync (group commit), and each record carries CRC32Cs, so a damaged
// record quarantines only its group. The shared bbolt file and per-group
// raft-boltdb files of earlier versions are migrated at open.
//
// Each group's state machine owns one key prefix of the engine and writes
// its applied index in the same atomic batch as the data, so raft runs with
// NoSnapshotRestoreOnStart and replay skips what the engine already holds.
// Commands carry a client request id, and a retried id returns the first
// outcome. Reads are linearizable at the leader (a barrier once per term,
// then a read view confirmed by a batched VerifyLeader) or stale from any
// replica with the applied index attached.
//
// Data partitions also keep, in the same batches, an expiry index of keys
// written with a TTL (the expiry is the command's leader time plus the TTL,
// so it is the same on every replica; the leader's SweepExpired proposes
// ExpireOps from it) and a bounded change log, one record per Raft index,
// that ReadChanges serves to watches on any replica; Changed wakes them
// after each applied batch. Pruning the log depends only on the log index
// and the retention, so replicas keep identical histories.
package replication
