package client

import (
	"errors"
	"fmt"

	"github.com/zerogrid/zerogrid/grid"
)

// Errors a caller may want to test with errors.Is. They are the grid
// sentinels, re-exported so that callers need import only this package; an
// error that crossed the wire matches them too.
var (
	ErrEmptyKey         = grid.ErrEmptyKey
	ErrKeyTooLarge      = grid.ErrKeyTooLarge
	ErrValueTooLarge    = grid.ErrValueTooLarge
	ErrInvalidMapName   = grid.ErrInvalidMapName
	ErrUnknownMap       = grid.ErrUnknownMap
	ErrMapExists        = grid.ErrMapExists
	ErrNotFound         = grid.ErrNotFound
	ErrNotLeader        = grid.ErrNotLeader
	ErrNoLeader         = grid.ErrNoLeader
	ErrPartitionNotHere = grid.ErrPartitionNotHere
	ErrAmbiguous        = grid.ErrAmbiguous
	ErrChecksum         = grid.ErrChecksum
	ErrBadRequest       = grid.ErrBadRequest
	ErrBadConfig        = grid.ErrBadConfig
	ErrClosed           = grid.ErrClosed
	// ErrPermissionDenied: the client's certificate lacks the role the call
	// needs (read, write, compute or admin).
	ErrPermissionDenied = grid.ErrPermissionDenied
	// ErrTooManyRequests: this client already has as many calls or
	// streams running on a node as the node allows one client.
	ErrTooManyRequests = grid.ErrTooManyRequests
	// ErrRequestTooLarge: one request was larger than the node takes for
	// its method (the client's own limit checks keep its requests under).
	ErrRequestTooLarge = grid.ErrRequestTooLarge
	// ErrOverloaded: the node had as many requests in progress as its
	// memory budget for them allows; nothing was done, try again later.
	ErrOverloaded = grid.ErrOverloaded
)

// Errors of Backup and Restore, raised by the client itself.
var (
	// ErrBadBackup: the backup file is truncated, altered or not a backup;
	// Restore refuses it before writing anything.
	ErrBadBackup = errors.New("client: backup file is damaged or not a zerogrid backup")
	// ErrRestoreTargetNotEmpty: a map the backup holds already has data in
	// the target cluster.
	ErrRestoreTargetNotEmpty = errors.New("client: restore target is not empty")
)

// NotLeaderError carries a node's hint about who leads a partition.
type NotLeaderError = grid.NotLeaderError

// AmbiguousError reports a write whose outcome is unknown: some attempt may
// have reached the leader, and no later attempt succeeded. It matches
// ErrAmbiguous, and also whatever the last attempt's error matches (a context
// deadline, say). Reading the key tells what happened.
type AmbiguousError struct {
	Op       string // "put", "delete", "compare-and-swap", "create map"
	Attempts int
	Err      error // why the last attempt failed
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("client: %s: outcome unknown after %d attempts, the write may or may not have been applied: %v",
		e.Op, e.Attempts, e.Err)
}

// Unwrap lets errors.Is match both ErrAmbiguous and the last attempt's error.
func (e *AmbiguousError) Unwrap() []error { return []error{grid.ErrAmbiguous, e.Err} }
