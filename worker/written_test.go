package worker_test

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// An attempt reads its job's record once, before its start write: the later writes of the
// attempt (working after a load, the terminal state) start from the record the worker
// wrote last rather than reading it again.
func TestAttemptReadsRecordOnce(t *testing.T) {
	tb := setup(t)
	j := tb.chat(t, "tiny-a", 1) // not resident in the fake: the job loads, then works
	var reads atomic.Int64
	sub, err := tb.b.Conn.Subscribe("$JS.API.DIRECT.GET.KV_"+broker.JobsBucket+".>", func(m *nats.Msg) {
		if strings.HasSuffix(m.Subject, "."+j.ID) {
			reads.Add(1)
		}
	})
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
	if err := tb.b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("the record was read %d times during the attempt, want 1", n)
	}
}
