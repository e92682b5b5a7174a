package ollama_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// A 2xx answer that is not streamed (application/json: an embedding, or a chat asked
// streamed that a proxy answers in one piece) and drips a byte now and then holds the
// call no longer than the idle limit from its first byte: its bytes are no progress until
// a MiB of them has come, or its end. Counted by bytes, a byte every idle limit less a bit
// held the attempt, and the worker, for the 64 MiB such an answer may reach. The wait for
// its first byte (the compute, a cold load) is still the first-byte limit's.
func TestStreamDrippedAnswerNotStreamedIsAStall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		path      string
		firstByte time.Duration // the worker gives a call that does not stream none
	}{
		{"a streamed chat answered in one piece", "/api/chat", time.Hour},
		{"an embedding", "/api/embed", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			arrived, answer := make(chan struct{}), make(chan struct{})
			gone := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer close(gone)
				_, _ = io.Copy(io.Discard, r.Body)
				close(arrived)
				select { // the compute
				case <-answer:
				case <-r.Context().Done():
					return
				}
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				w.WriteHeader(http.StatusOK)
				_, _ = io.WriteString(w, `{"embeddings":[[0.`)
				dripUntilGone(w, r, "1")
			}))
			t.Cleanup(srv.Close)
			read := &readCounter{rt: &http.Transport{}}
			c, err := ollama.NewClient(ollama.ClientConfig{BaseURL: srv.URL, HTTPClient: &http.Client{Transport: read}})
			if err != nil {
				t.Fatal(err)
			}
			clk := ollama.NewFakeClock()
			errc := make(chan error, 1)
			go func() {
				_, err := c.Stream(testCtx(t), tc.path, []byte(stallChat), func([]byte) error { return nil },
					ollama.FirstByteTimeout(tc.firstByte), ollama.IdleTimeout(500*time.Millisecond), ollama.WithClock(clk))
				errc <- err
			}()
			<-arrived
			// The compute takes many idle limits: only the first-byte limit bounds it.
			clk.Advance(10 * time.Minute)
			select {
			case err := <-errc:
				t.Fatalf("the call ended while the target computed: %v", err)
			default:
			}
			close(answer)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			// The clock moves on only once the call has read more of the answer: a drip it
			// reads all along.
			seen, advances := int64(0), 0
			for err == nil {
				select {
				case err = <-errc:
				case <-tick.C:
					if n := read.n.Load(); n > seen {
						if advances++; advances == 100 {
							t.Fatal("the call still reads its dripping answer after 50 idle limits")
						}
						seen = n
						clk.Advance(250 * time.Millisecond)
					}
				}
			}
			wantStall(t, err, false, 500*time.Millisecond)
			var se *ollama.StallError
			if errors.As(err, &se); !se.Trickle || se.Status != 0 {
				t.Errorf("stall %+v, want a trickle's", se)
			}
			if got := err.Error(); got != "target stalled: no MiB of the answer, nor its end, for 500ms, only a trickle of bytes" {
				t.Errorf("message %q", got)
			}
			<-gone // the call was aborted
		})
	}
}

// readCounter counts the reads of the bodies of the answers it carries that brought bytes.
type readCounter struct {
	rt http.RoundTripper
	n  atomic.Int64
}

func (c *readCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(r)
	if err == nil {
		resp.Body = countedBody{resp.Body, &c.n}
	}
	return resp, err
}

type countedBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.n.Add(1)
	}
	return n, err
}
