package node

import (
	"testing"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// TestMoveMustFinish walks a replica move (n4 replaces n1) through the
// configurations the group passes, and checks when advance may still roll
// it back. The 12-round container fault run once rolled a move back after
// the leaving replica was removed: the table then named n1, which the group
// no longer had, and the group stayed a voter short.
func TestMoveMustFinish(t *testing.T) {
	p := &grid.Partition{ID: 7, Replicas: []string{"n1", "n2", "n3"}, Learner: "n4", Leaving: "n1"}
	voter := func(id string) *gridpb.Member { return &gridpb.Member{Id: id, Voter: true} }
	learner := func(id string) *gridpb.Member { return &gridpb.Member{Id: id} }
	for _, tc := range []struct {
		name    string
		members []*gridpb.Member
		finish  bool
	}{
		{"learner not added yet", []*gridpb.Member{voter("n1"), voter("n2"), voter("n3")}, false},
		{"learner catching up", []*gridpb.Member{voter("n1"), voter("n2"), voter("n3"), learner("n4")}, false},
		{"learner promoted, leaving still in", []*gridpb.Member{voter("n1"), voter("n2"), voter("n3"), voter("n4")}, false},
		{"leaving removed", []*gridpb.Member{voter("n2"), voter("n3"), voter("n4")}, true},
		{"leaving removed, learner not promoted", []*gridpb.Member{voter("n2"), voter("n3"), learner("n4")}, false},
		{"leaving removed, learner gone", []*gridpb.Member{voter("n2"), voter("n3")}, false},
	} {
		if got := moveMustFinish(p, tc.members); got != tc.finish {
			t.Errorf("%s: moveMustFinish = %v, want %v", tc.name, got, tc.finish)
		}
	}
	// A move without a leaving replica (a repair, a re-added learner) is
	// never forced forward.
	repair := &grid.Partition{ID: 7, Replicas: []string{"n2", "n3"}, Learner: "n1"}
	if moveMustFinish(repair, []*gridpb.Member{voter("n2"), voter("n3"), voter("n1")}) {
		t.Error("a repair without a leaving replica was forced forward")
	}
}
