package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The queued path's overhead over calling the (zero-delay) fake directly: a job record,
// a queue message, the worker's pick, the token stream over NATS and the relay. Each
// iteration times one request through foreman and the same request straight to the fake,
// so both see the same machine load. Reported as custom metrics (ms), not asserted.

func BenchmarkQueuedChatNonStream(b *testing.B) {
	qb, st := newBenchBundle(b)
	body := chatBody("tiny-a", "bench", "false")
	benchPair(b, wholeAnswer(b, body), qb.URL, qb.Fake.URL)
	st.report(b)
}

func BenchmarkQueuedChatFirstChunk(b *testing.B) {
	qb, st := newBenchBundle(b)
	body := chatBody("tiny-a", "bench", "true")
	benchPair(b, func(base string) time.Duration {
		start := time.Now()
		resp := benchPost(b, base+"/api/chat", body)
		if _, err := bufio.NewReader(resp.Body).ReadBytes('\n'); err != nil {
			b.Fatal(err)
		}
		d := time.Since(start)
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		return d
	}, qb.URL, qb.Fake.URL)
	st.report(b)
}

// BenchmarkQueuedChatAfterIdle is the non-stream chat arriving at an idle worker (the
// usual case with real traffic): each request comes 60 ms after the last answer, past the
// worker's short rechecks, so only the wake-up on the publish can start the job promptly.
// The direct request pauses as long before it: a process idle for 60 ms wakes up slower
// (its threads sleep, its caches are cold) whoever it serves, and only what foreman adds
// beyond that is foreman's.
func BenchmarkQueuedChatAfterIdle(b *testing.B) {
	qb, st := newBenchBundle(b)
	body := chatBody("tiny-a", "bench", "false")
	timed := wholeAnswer(b, body)
	benchPair(b, func(base string) time.Duration {
		// A deliberate pause, not a wait, outside the timed part: the worker must go idle
		// past its short rechecks, which is the case this benchmark measures.
		time.Sleep(60 * time.Millisecond)
		return timed(base)
	}, qb.URL, qb.Fake.URL)
	st.report(b)
}

// BenchmarkQueuedChatPaced is the non-stream chat against a fake that takes its time as
// a warm small model does (8 tokens, 1 ms each): what runs alongside the target call (the
// start write) is hidden behind it, as it is with a real Ollama, while the zero-delay
// fake of the benchmarks above lays every step of foreman end to end.
func BenchmarkQueuedChatPaced(b *testing.B) {
	qb, st := newBenchBundle(b, withFake(ollamatest.WithTokenDelay(time.Millisecond), ollamatest.WithTokens(8)))
	body := chatBody("tiny-a", "bench", "false")
	benchPair(b, wholeAnswer(b, body), qb.URL, qb.Fake.URL)
	st.report(b)
}

// BenchmarkQueuedChatRealOllama is the non-stream 8-token chat against the real Ollama
// of FOREMAN_TEST_OLLAMA_URL (skipped without it), its model warm: the comparison users
// make, foreman against the same Ollama called directly.
func BenchmarkQueuedChatRealOllama(b *testing.B) {
	url := ollamatest.RealOllama(b)
	qb, st := newBenchBundle(b, withTargetURL(url))
	body := []byte(`{"model":"tiny-a","messages":[{"role":"user","content":"bench"}],"stream":false,"options":{"num_predict":8}}`)
	benchPair(b, wholeAnswer(b, body), qb.URL, url)
	st.report(b)
}

// newBenchBundle is a queued bundle whose gateway and worker tell st each stage of a job.
func newBenchBundle(b *testing.B, opts ...bundleOption) (*queuedBundle, *stageTrace) {
	st := &stageTrace{at: map[string]map[string]time.Time{}}
	qb := newQueuedBundle(b, func(c *worker.Config) {
		benchWorker(c)
		c.Trace = func(id, stage string) { st.mark(id, stage, time.Now()) }
	}, opts...)
	qb.GW.trace = st.mark
	return qb, st
}

// stageTrace is the per-stage trace of the jobs of a benchmark: when each job reached
// each stage, as the gateway and the worker told it.
type stageTrace struct {
	mu sync.Mutex
	at map[string]map[string]time.Time // job id → stage → first time reached
}

func (st *stageTrace) mark(id, stage string, at time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	m := st.at[id]
	if m == nil {
		m = map[string]time.Time{}
		st.at[id] = m
	}
	if _, seen := m[stage]; !seen {
		m[stage] = at
	}
}

// traceStages are the stages of a sync job in the order a job passes them (the start
// write may be acked before or after the call is issued).
var traceStages = []string{
	traceSubmitted, worker.StageWoken, worker.StageFetched, worker.StageRecord,
	worker.StageCalled, worker.StageStarted, worker.StageFirstFrame, traceRelayed,
	worker.StageFinal, traceFinalSeen, traceWritten,
}

// report adds, for each stage, the median time from the request reaching its handler to
// the stage (ms) over every traced job, and logs the breakdown.
func (st *stageTrace) report(b *testing.B) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var line strings.Builder
	for _, stage := range traceStages {
		var ds []time.Duration
		for _, m := range st.at {
			in, ok := m[traceIn]
			at, ok2 := m[stage]
			if ok && ok2 {
				ds = append(ds, at.Sub(in))
			}
		}
		if len(ds) == 0 {
			continue
		}
		p50, _ := percentiles(ds)
		ms := float64(p50) / float64(time.Millisecond)
		b.ReportMetric(ms, "at-"+stage+"-ms")
		fmt.Fprintf(&line, " %s=%.3f", stage, ms)
	}
	b.Logf("stage p50 from request in (ms):%s", line.String())
}

// wholeAnswer times one POST /api/chat of body to a base URL until its whole answer is
// read.
func wholeAnswer(b *testing.B, body []byte) func(base string) time.Duration {
	return func(base string) time.Duration {
		start := time.Now()
		resp := benchPost(b, base+"/api/chat", body)
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		return time.Since(start)
	}
}

// benchWorker keeps the worker's defaults (IdlePoll 1s), as foreman serve runs it.
func benchWorker(c *worker.Config) { c.IdlePoll, c.RetryDelay = 0, 0 }

// benchPair times one request through foreman and one direct per iteration and reports
// the percentiles of both and the added latency at p50 and p99.
func benchPair(b *testing.B, timed func(base string) time.Duration, viaForeman, direct string) {
	timed(viaForeman) // warm the connections and load the model
	timed(direct)
	var via, dir []time.Duration
	for b.Loop() {
		via = append(via, timed(viaForeman))
		dir = append(dir, timed(direct))
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	vp50, vp99 := percentiles(via)
	dp50, dp99 := percentiles(dir)
	b.ReportMetric(ms(vp50), "foreman-p50-ms")
	b.ReportMetric(ms(vp99), "foreman-p99-ms")
	b.ReportMetric(ms(dp50), "direct-p50-ms")
	b.ReportMetric(ms(dp99), "direct-p99-ms")
	b.ReportMetric(ms(vp50-dp50), "added-p50-ms")
	b.ReportMetric(ms(vp99-dp99), "added-p99-ms")
}

func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return at(0.50), at(0.99)
}

func benchPost(b testing.TB, url string, body []byte) *http.Response {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("POST %s: %d", url, resp.StatusCode)
	}
	return resp
}
