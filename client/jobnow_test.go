package client_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// TestJobNowIsForemansTime: Job and Cancel say foreman's time when it answered (Job.Now,
// from the answer's Date), so a job's ages can be taken on foreman's clock, as a list's
// are on JobList.Now. Date is cut to the second: a stamp of the record within that second
// raises Now to it (the answer came after its record was written), one past it (another
// clock's) does not; an answer without Date leaves Now zero.
func TestJobNowIsForemansTime(t *testing.T) {
	t.Parallel()
	const id = "01JGJ4Q2R0000000000000000A"
	record := func(started string) string {
		return `{"id":"` + id + `","kind":"chat","model":"m","state":"working","attempts":1,` +
			`"created_at":"2025-01-02T02:50:05Z","started_at":"` + started + `"}`
	}
	date := time.Date(2025, 1, 2, 2, 54, 5, 0, time.UTC)
	for _, tc := range []struct {
		name, date, started string
		want                time.Time
	}{
		{"Date", "Thu, 02 Jan 2025 02:54:05 GMT", "2025-01-02T02:53:05Z", date},
		{"a stamp within Date's second", "Thu, 02 Jan 2025 02:54:05 GMT", "2025-01-02T02:54:05.6Z", date.Add(600 * time.Millisecond)},
		{"a stamp past Date's second", "Thu, 02 Jan 2025 02:54:05 GMT", "2025-01-02T02:54:06.5Z", date},
		{"no Date", "", "2025-01-02T02:53:05Z", time.Time{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				if tc.date == "" {
					w.Header()["Date"] = nil // net/http adds none
				} else {
					w.Header().Set("Date", tc.date)
				}
				_, _ = io.WriteString(w, record(tc.started))
			}))
			t.Cleanup(srv.Close)
			c := newClient(t, srv.URL, client.WithPollingOnly())
			for call, f := range map[string]func() (*client.Job, error){
				"Job":    func() (*client.Job, error) { return c.Job(testCtx(t), id) },
				"Cancel": func() (*client.Job, error) { return c.Cancel(testCtx(t), id) },
			} {
				j, err := f()
				if err != nil {
					t.Fatalf("%s: %v", call, err)
				}
				if !j.Now.Equal(tc.want) {
					t.Errorf("%s: Now = %v; want %v", call, j.Now, tc.want)
				}
			}
		})
	}
}
