package grid

import (
	"errors"
	"fmt"
)

// Sentinel errors shared by the server and the client. The gRPC boundary maps
// each one to a status code and back (see gridpb), so callers can always test
// them with errors.Is, on either side of the wire.
var (
	ErrEmptyKey         = errors.New("grid: key is empty")
	ErrKeyTooLarge      = errors.New("grid: key too large")
	ErrValueTooLarge    = errors.New("grid: value too large")
	ErrInvalidMapName   = errors.New("grid: invalid map name")
	ErrUnknownMap       = errors.New("grid: unknown map")
	ErrMapExists        = errors.New("grid: map already exists")
	ErrNotFound         = errors.New("grid: key not found")
	ErrNotLeader        = errors.New("grid: not the partition leader")
	ErrNoLeader         = errors.New("grid: partition has no leader")
	ErrPartitionNotHere = errors.New("grid: partition not hosted on this node")
	ErrBadPartition     = errors.New("grid: partition out of range")
	ErrAmbiguous        = errors.New("grid: outcome unknown (the write may or may not have been applied)")
	ErrBadRequest       = errors.New("grid: malformed request")
	ErrChecksum         = errors.New("grid: checksum mismatch")
	ErrTooManyNodes     = errors.New("grid: not enough nodes for the replica count")
	ErrBadConfig        = errors.New("grid: invalid configuration")
	ErrClosed           = errors.New("grid: closed")
	ErrJobInvalid       = errors.New("grid: invalid job")
	ErrJobLimit         = errors.New("grid: job exceeded a limit")
	ErrJobFailed        = errors.New("grid: job failed")
	ErrContended        = errors.New("grid: key changed too often while the processor ran")
	// ErrNoEligibleNodes says no node may hold a replica: none is active, or
	// every active node is compute-only or short of disk.
	ErrNoEligibleNodes = errors.New("grid: no node is eligible to hold replicas")
	// ErrJoinRefused: the join token is wrong, or the cluster admits no joins.
	ErrJoinRefused = errors.New("grid: join refused")
	// ErrNodeExists: a node id or address is already a member.
	ErrNodeExists = errors.New("grid: node already a member")
	// ErrUnknownNode: no node has this id.
	ErrUnknownNode = errors.New("grid: unknown node")
	// ErrNodeBusy: the node still holds replicas (drain it first).
	ErrNodeBusy = errors.New("grid: node still holds replicas")
	// ErrNodeRetired: the node answering was removed from the cluster; ask
	// another node.
	ErrNodeRetired = errors.New("grid: node was removed from the cluster")
	// ErrCompacted: a watch asked for a version older than the partition's
	// retained change history (a *CompactedError says which is the oldest).
	ErrCompacted = errors.New("grid: watch history compacted")
	// ErrRefused: the cluster's state does not allow the operation now
	// (a recovery of a partition that still has a leader, a quarantine
	// without evidence); the message says why.
	ErrRefused = errors.New("grid: refused")
	// ErrDiskFull: the node leading the partition is short of disk space
	// (under its reserve) and refuses writes that would grow its data;
	// nothing was written. Reads, deletes and lock renewals and releases go on.
	ErrDiskFull = errors.New("grid: node disk full")
	// ErrUnauthenticated: the call came without a certificate from the
	// cluster CA.
	ErrUnauthenticated = errors.New("grid: unauthenticated")
	// ErrPermissionDenied: the caller's certificate does not grant the
	// role the call needs, or speaks for someone else; nothing was done.
	ErrPermissionDenied = errors.New("grid: permission denied")
	// ErrTooManyRequests: the caller already has as many calls or streams
	// running on the node as it may; nothing was done.
	ErrTooManyRequests = errors.New("grid: too many requests from this client")
	// ErrRequestTooLarge: one request message is larger than its method
	// takes (see the node's receive limits); nothing was done.
	ErrRequestTooLarge = errors.New("grid: request too large")
	// ErrOverloaded: the node is reading and handling as many requests as
	// its memory budget for them allows; nothing was done, and a later
	// attempt may pass.
	ErrOverloaded = errors.New("grid: node overloaded")
)

// NotLeaderError says who the leader is believed to be, so a client can go
// straight there. It wraps ErrNotLeader.
type NotLeaderError struct {
	Partition  int
	LeaderID   string
	LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return "grid: not the partition leader (leader unknown)"
	}
	return "grid: not the partition leader (leader is " + e.LeaderID + " at " + e.LeaderAddr + ")"
}

// Unwrap lets errors.Is(err, ErrNotLeader) match.
func (e *NotLeaderError) Unwrap() error { return ErrNotLeader }

// CompactedError says how far back a partition's change history goes. It
// wraps ErrCompacted.
type CompactedError struct {
	Partition int
	Requested uint64 // the version asked for
	Oldest    uint64 // the oldest version still retained
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("grid: watch history of partition %d compacted: version %d requested, oldest retained is %d",
		e.Partition, e.Requested, e.Oldest)
}

// Unwrap lets errors.Is(err, ErrCompacted) match.
func (e *CompactedError) Unwrap() error { return ErrCompacted }
