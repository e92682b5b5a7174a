package gateway

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The queued path's overhead over calling the (zero-delay) fake directly: a job record,
// a queue message, the worker's pick, the token stream over NATS and the relay. Each
// iteration times one request through foreman and the same request straight to the fake,
// so both see the same machine load. Reported as custom metrics (ms), not asserted.

func BenchmarkQueuedChatNonStream(b *testing.B) {
	qb := newQueuedBundle(b, benchWorker)
	body := chatBody("tiny-a", "bench", "false")
	benchPair(b, func(base string) time.Duration {
		start := time.Now()
		resp := benchPost(b, base+"/api/chat", body)
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		return time.Since(start)
	}, qb.URL, qb.Fake.URL)
}

func BenchmarkQueuedChatFirstChunk(b *testing.B) {
	qb := newQueuedBundle(b, benchWorker)
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
}

// BenchmarkQueuedChatAfterIdle is the non-stream chat arriving at an idle worker (the
// usual case with real traffic): each request comes 60 ms after the last answer, past the
// worker's short rechecks, so only the wake-up on the publish can start the job promptly.
func BenchmarkQueuedChatAfterIdle(b *testing.B) {
	qb := newQueuedBundle(b, benchWorker)
	body := chatBody("tiny-a", "bench", "false")
	benchPair(b, func(base string) time.Duration {
		if base == qb.URL {
			// A deliberate pause, not a wait, outside the timed part: the worker must go
			// idle past its short rechecks, which is the case this benchmark measures.
			time.Sleep(60 * time.Millisecond)
		}
		start := time.Now()
		resp := benchPost(b, base+"/api/chat", body)
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		return time.Since(start)
	}, qb.URL, qb.Fake.URL)
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
