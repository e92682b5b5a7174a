package gateway

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// The job metrics keep, per job, what they counted of it, to count each job's wait, load
// and end once. A job's events end a job TTL after its last (its record is gone then), so
// what they keep of it may go then; they kept it until 50,000 jobs had ended, and a
// foreman of a few thousand jobs a day held weeks of jobs it would never hear of again.
// Here jobs end (canceled while they wait, so no worker is needed), the metrics' clock
// moves two job TTLs on, and one more job ends: the metrics then know that one job only.
func TestJobMetricsForgetJobsAJobTTLAfterTheirLastEvent(t *testing.T) {
	b := newTestBundle(t)
	var shift atomic.Int64
	b.GW.jobMetrics.mu.Lock()
	b.GW.jobMetrics.now = func() time.Time { return time.Now().Add(time.Duration(shift.Load())) }
	b.GW.jobMetrics.mu.Unlock()
	runUntilCleanup(t, "metrics", b.GW.RunMetrics)

	cancelJobs := func(from, n int) {
		t.Helper()
		for i := from; i < from+n; i++ {
			id := jobsSubmit(t, b, fmt.Sprintf(`{"model":"tiny-a","messages":[{"role":"user","content":"j%d"}]}`, i))
			if resp, out := b.request(t, http.MethodDelete, "/jobs/"+id, nil); resp.StatusCode != http.StatusOK {
				t.Fatalf("cancel %s: %d %s", id, resp.StatusCode, out)
			}
		}
		eventually(t, 20*time.Second, "the cancels counted", func() bool {
			return metricValue(scrape(t, b), "foreman_jobs_total", "model", "tiny-a:latest", "state", "canceled") == float64(from+n)
		})
	}
	const jobs = 20
	cancelJobs(0, jobs)
	if got := b.GW.jobMetrics.known(); got != jobs {
		t.Fatalf("the metrics know %d jobs after %d ended; want %d", got, jobs, jobs)
	}
	shift.Store(int64(2*b.Broker.Store.JobTTL() + time.Minute))
	cancelJobs(jobs, 1)
	if got := b.GW.jobMetrics.known(); got != 1 {
		t.Errorf("the metrics know %d jobs two job TTLs after %d ended and one more; want 1 (the jobs gone with their records are forgotten)", got, jobs)
	}
}
