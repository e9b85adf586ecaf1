package gridpb

import (
	"context"
	"errors"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
)

// errorDomain tags zerogrid's ErrorInfo details.
const errorDomain = "zerogrid"

// errorTable is the one place grid errors meet gRPC codes. The reason string
// travels in an ErrorInfo detail, so the client maps it back to the same
// sentinel without ever reading the message text.
var errorTable = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{grid.ErrEmptyKey, codes.InvalidArgument, "EMPTY_KEY"},
	{grid.ErrKeyTooLarge, codes.InvalidArgument, "KEY_TOO_LARGE"},
	{grid.ErrValueTooLarge, codes.InvalidArgument, "VALUE_TOO_LARGE"},
	{grid.ErrInvalidMapName, codes.InvalidArgument, "INVALID_MAP_NAME"},
	{grid.ErrBadRequest, codes.InvalidArgument, "BAD_REQUEST"},
	{grid.ErrBadPartition, codes.InvalidArgument, "BAD_PARTITION"},
	{grid.ErrUnknownMap, codes.NotFound, "UNKNOWN_MAP"},
	{grid.ErrNotFound, codes.NotFound, "NOT_FOUND"},
	{grid.ErrMapExists, codes.AlreadyExists, "MAP_EXISTS"},
	{grid.ErrNotLeader, codes.FailedPrecondition, "NOT_LEADER"},
	{grid.ErrPartitionNotHere, codes.FailedPrecondition, "PARTITION_NOT_HERE"},
	{grid.ErrNoLeader, codes.Unavailable, "NO_LEADER"},
	{grid.ErrAmbiguous, codes.Unknown, "AMBIGUOUS"},
	{grid.ErrChecksum, codes.DataLoss, "CHECKSUM"},
	{grid.ErrClosed, codes.Unavailable, "CLOSED"},
	{grid.ErrJobInvalid, codes.InvalidArgument, "JOB_INVALID"},
	{grid.ErrJobLimit, codes.ResourceExhausted, "JOB_LIMIT"},
	{grid.ErrJobFailed, codes.Aborted, "JOB_FAILED"},
	{grid.ErrContended, codes.Aborted, "CONTENDED"},
	{grid.ErrNoEligibleNodes, codes.FailedPrecondition, "NO_ELIGIBLE_NODES"},
	{grid.ErrTooManyNodes, codes.FailedPrecondition, "NOT_ENOUGH_NODES"},
	{grid.ErrJoinRefused, codes.PermissionDenied, "JOIN_REFUSED"},
	{grid.ErrNodeExists, codes.AlreadyExists, "NODE_EXISTS"},
	{grid.ErrUnknownNode, codes.NotFound, "UNKNOWN_NODE"},
	{grid.ErrNodeBusy, codes.FailedPrecondition, "NODE_HOLDS_REPLICAS"},
	{grid.ErrNodeRetired, codes.Unavailable, "NODE_RETIRED"},
	// A fence error may wrap a lock-name error: the fence row comes first.
	{grid.ErrInvalidFence, codes.InvalidArgument, "INVALID_FENCE"},
	{grid.ErrInvalidLockName, codes.InvalidArgument, "INVALID_LOCK_NAME"},
	{grid.ErrInvalidLeaseTTL, codes.InvalidArgument, "INVALID_LEASE_TTL"},
	{grid.ErrLockHeld, codes.FailedPrecondition, "LOCK_HELD"},
	{grid.ErrLockNotHeld, codes.FailedPrecondition, "LOCK_NOT_HELD"},
	{grid.ErrStaleToken, codes.FailedPrecondition, "STALE_TOKEN"},
	{grid.ErrCompacted, codes.OutOfRange, "COMPACTED"},
	{grid.ErrRefused, codes.FailedPrecondition, "REFUSED"},
	{grid.ErrDiskFull, codes.ResourceExhausted, "DISK_FULL"},
	{grid.ErrUnauthenticated, codes.Unauthenticated, "UNAUTHENTICATED"},
	{grid.ErrPermissionDenied, codes.PermissionDenied, "PERMISSION_DENIED"},
	{grid.ErrTooManyRequests, codes.ResourceExhausted, "TOO_MANY_REQUESTS"},
	{grid.ErrRequestTooLarge, codes.ResourceExhausted, "REQUEST_TOO_LARGE"},
	{grid.ErrOverloaded, codes.ResourceExhausted, "OVERLOADED"},
}

// ToStatus converts an error from the node into a gRPC status error. A
// context error becomes the matching code; anything unknown becomes Internal.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	for _, row := range errorTable {
		if !errors.Is(err, row.err) {
			continue
		}
		info := &errdetails.ErrorInfo{Reason: row.reason, Domain: errorDomain}
		var nl *grid.NotLeaderError
		if errors.As(err, &nl) {
			info.Metadata = map[string]string{
				"partition":   strconv.Itoa(nl.Partition),
				"leader_id":   nl.LeaderID,
				"leader_addr": nl.LeaderAddr,
			}
		}
		var ce *grid.CompactedError
		if errors.As(err, &ce) {
			info.Metadata = map[string]string{
				"partition": strconv.Itoa(ce.Partition),
				"requested": strconv.FormatUint(ce.Requested, 10),
				"oldest":    strconv.FormatUint(ce.Oldest, 10),
			}
		}
		st, derr := status.New(row.code, err.Error()).WithDetails(info)
		if derr != nil {
			return status.Error(row.code, err.Error())
		}
		return st.Err()
	}
	return status.Error(codes.Internal, err.Error())
}

// FromStatus converts a gRPC error back into an error that matches the grid
// sentinels with errors.Is (a NotLeaderError keeps its leader hint). The
// original status stays reachable through errors.As on *StatusError.
func FromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.Domain != errorDomain {
			continue
		}
		for _, row := range errorTable {
			if row.reason != info.Reason {
				continue
			}
			if row.err == grid.ErrNotLeader {
				p, _ := strconv.Atoi(info.Metadata["partition"])
				return &StatusError{Status: st, err: &grid.NotLeaderError{
					Partition: p, LeaderID: info.Metadata["leader_id"], LeaderAddr: info.Metadata["leader_addr"],
				}}
			}
			if row.err == grid.ErrCompacted {
				p, _ := strconv.Atoi(info.Metadata["partition"])
				req, _ := strconv.ParseUint(info.Metadata["requested"], 10, 64)
				old, _ := strconv.ParseUint(info.Metadata["oldest"], 10, 64)
				return &StatusError{Status: st, err: &grid.CompactedError{Partition: p, Requested: req, Oldest: old}}
			}
			return &StatusError{Status: st, err: row.err}
		}
	}
	switch st.Code() {
	case codes.DeadlineExceeded:
		return &StatusError{Status: st, err: context.DeadlineExceeded}
	case codes.Canceled:
		return &StatusError{Status: st, err: context.Canceled}
	}
	return &StatusError{Status: st}
}

// StatusError is a gRPC status carried back to the caller, wrapping the grid
// sentinel it stands for (if any).
type StatusError struct {
	Status *status.Status
	err    error
}

func (e *StatusError) Error() string { return e.Status.Message() }

// Unwrap returns the grid sentinel (or nil).
func (e *StatusError) Unwrap() error { return e.err }

// GRPCStatus lets status.FromError see through the wrapper.
func (e *StatusError) GRPCStatus() *status.Status { return e.Status }
