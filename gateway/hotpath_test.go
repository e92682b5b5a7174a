package gateway

import (
	"context"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A sync chat passes every stage of the hot path's trace, in causal order: the job is on
// disk (its record read) before the first frame is published (ADR-0032, ADR-0036), the
// client is answered from the final marker (which need not wait for the start either,
// ADR-0038), and the worker was woken by the publish of the job it ran (and may have
// called the target then, ADR-0034).
func TestSyncChatTraceStages(t *testing.T) {
	t.Parallel()
	st := &stageTrace{at: map[string]map[string]time.Time{}}
	qb := newQueuedBundle(t, func(c *worker.Config) {
		c.Trace = func(id, stage string) { st.mark(id, stage, time.Now()) }
	})
	qb.GW.trace = st.mark
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A chat answered first: the worker's loop runs, its wake-up hook is in place (a job
	// submitted before it was would be found by the loop's first look, never woken for).
	if resp := post(t, ctx, qb.URL, "/api/chat", chatBody("tiny-a", "warm-up", "false")); resp.Status != http.StatusOK {
		t.Fatalf("warm-up chat: %d %s", resp.Status, resp.Body)
	}
	for _, stream := range []string{"false", "true"} {
		resp := post(t, ctx, qb.URL, "/api/chat", chatBody("tiny-a", "trace", stream))
		if resp.Status != http.StatusOK {
			t.Fatalf("stream %s: %d %s", stream, resp.Status, resp.Body)
		}
		id := resp.Header.Get(HeaderJobID)
		// The handler traces the response written as it returns, after the client has it;
		// the start may be stored after the answer too (ADR-0038).
		eventually(t, 10*time.Second, "stages "+traceWritten+" and "+worker.StageStarted, func() bool {
			st.mu.Lock()
			defer st.mu.Unlock()
			_, done := st.at[id][traceWritten]
			_, started := st.at[id][worker.StageStarted]
			return done && started
		})
		st.mu.Lock()
		at := st.at[id]
		st.mu.Unlock()
		for _, order := range [][2]string{
			{traceIn, traceSubmitted},
			{traceIn, worker.StageWoken},
			{worker.StageWoken, worker.StageFetched},
			{worker.StageFetched, worker.StageRecord},
			{worker.StageWoken, worker.StageCalled}, // with EarlyCall maybe before the fetch (ADR-0034)
			{worker.StageRecord, worker.StageStarted},
			{worker.StageRecord, worker.StageFirstFrame}, // a sync job's frames need not wait for the start (ADR-0036)
			{worker.StageFirstFrame, traceRelayed},
			{worker.StageFirstFrame, worker.StageFinal},
			{worker.StageFinal, traceFinalSeen},
			{traceFinalSeen, traceWritten},
		} {
			a, aok := at[order[0]]
			b, bok := at[order[1]]
			if !aok || !bok {
				t.Errorf("stream %s: stage %q or %q missing: %v", stream, order[0], order[1], at)
				continue
			}
			if b.Before(a) {
				t.Errorf("stream %s: %q came %s before %q", stream, order[1], a.Sub(b), order[0])
			}
		}
	}
}
