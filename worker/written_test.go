package worker_test

import (
	"slices"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An attempt reads its job's record once, before its start write: the later writes of the
// attempt (working after a load, the terminal state) start from the record the worker
// wrote last rather than reading it again.
func TestAttemptReadsRecordOnce(t *testing.T) {
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1) // not resident in the fake: the job loads, then works
	sub, err := tb.b.Conn.SubscribeSync("$JS.API.DIRECT.GET.KV_" + broker.JobsBucket + ".>")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	states := watchStates(t, tb.b.Conn, j.ID)
	tb.start(t, worker.Config{})
	got := states.until(t)
	if want := []broker.State{broker.StateLoading, broker.StateWorking, broker.StateDone}; !slices.Equal(got, want) {
		t.Fatalf("states %v, want %v", got, want)
	}
	// The reads went by before the flush's answer, and the connection's reader queued
	// them on the subscription before it took that answer.
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		m, err := sub.NextMsg(0)
		if err != nil {
			break
		}
		if strings.HasSuffix(m.Subject, "."+j.ID) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the record was read %d times during the attempt, want 1", n)
	}
}
