package gridpb

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zerogrid/zerogrid/grid"
)

// Every grid sentinel survives the trip through a gRPC status and back.
func TestErrorTableRoundTrip(t *testing.T) {
	for _, row := range errorTable {
		wrapped := fmt.Errorf("context: %w", row.err)
		st := ToStatus(wrapped)
		if got := status.Code(st); got != row.code {
			t.Errorf("%v: code %v, want %v", row.err, got, row.code)
		}
		back := FromStatus(st)
		if !errors.Is(back, row.err) {
			t.Errorf("%v came back as %v", row.err, back)
		}
	}
}

func TestNotLeaderHintSurvives(t *testing.T) {
	back := FromStatus(ToStatus(&grid.NotLeaderError{Partition: 7, LeaderID: "n2", LeaderAddr: "127.0.0.1:7102"}))
	var nl *grid.NotLeaderError
	if !errors.As(back, &nl) || nl.Partition != 7 || nl.LeaderID != "n2" || nl.LeaderAddr != "127.0.0.1:7102" {
		t.Fatalf("hint lost: %v", back)
	}
	if !errors.Is(back, grid.ErrNotLeader) {
		t.Fatal("NotLeaderError does not match ErrNotLeader")
	}
}

func TestUnknownAndContextErrors(t *testing.T) {
	if c := status.Code(ToStatus(errors.New("boom"))); c != codes.Internal {
		t.Errorf("unknown error → %v, want Internal", c)
	}
	if c := status.Code(ToStatus(fmt.Errorf("x: %w", context.DeadlineExceeded))); c != codes.DeadlineExceeded {
		t.Errorf("deadline → %v", c)
	}
	if !errors.Is(FromStatus(status.Error(codes.DeadlineExceeded, "late")), context.DeadlineExceeded) {
		t.Error("DeadlineExceeded status does not match context.DeadlineExceeded")
	}
	if ToStatus(nil) != nil || FromStatus(nil) != nil {
		t.Error("nil must stay nil")
	}
}

func TestCompactedErrorSurvives(t *testing.T) {
	back := FromStatus(ToStatus(fmt.Errorf("watch: %w", &grid.CompactedError{Partition: 3, Requested: 5, Oldest: 40})))
	var ce *grid.CompactedError
	if !errors.As(back, &ce) || ce.Partition != 3 || ce.Requested != 5 || ce.Oldest != 40 {
		t.Fatalf("compacted error lost its fields: %v (%#v)", back, ce)
	}
	if !errors.Is(back, grid.ErrCompacted) || status.Code(back) != codes.OutOfRange {
		t.Fatalf("compacted error maps to %v", back)
	}
}
