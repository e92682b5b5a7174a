package app_test

import (
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// freezer is a TCP proxy to a NATS server that can stop passing bytes while keeping
// every connection open: a NATS that froze (a paused VM, a wedged process), which a
// client sees as connected until its pings go unanswered for minutes.
type freezer struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	conns  []net.Conn
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, target: strings.TrimPrefix(target, "nats://")}
	f.cond = sync.NewCond(&f.mu)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) url() string { return "nats://" + f.ln.Addr().String() }

func (f *freezer) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, c, up)
		f.mu.Unlock()
		go f.pipe(up, c)
		go f.pipe(c, up)
	}
}

// pipe copies src to dst, each chunk held while the freezer is frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f.mu.Lock()
			for f.frozen {
				f.cond.Wait()
			}
			f.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// connected says whether a client's connection passes through f.
func (f *freezer) connected() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns) > 0
}

func (f *freezer) freeze(on bool) {
	f.mu.Lock()
	f.frozen = on
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *freezer) close() {
	f.freeze(false)
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
}

// /healthz on a shared NATS that froze says so, its read of the other foremen's targets
// bounded (to a second, a health probe's usual timeout): that read waited out nats.go's
// 5 s request timeout, and then showed "nats":"ok" with the other Macs silently gone
// from the list.
func TestHealthzOnAFrozenNATS(t *testing.T) {
	mac := ollamatest.New(t)
	fr := newFreezer(t, sharedNATS(t))
	fa := startForeman(t, fr.url(), "mac-a", mac.URL)
	waitTargets(t, fa, 1)
	fr.freeze(true)
	defer fr.freeze(false) // before the foreman's shutdown, registered earlier, runs
	eventually(t, 20*time.Second, "/healthz says the targets could not be read", func() bool {
		code, b := call(t, fa, http.MethodGet, "/healthz", "")
		var h struct {
			Status string `json:"status"`
			NATS   string `json:"nats"`
		}
		if err := json.Unmarshal(b, &h); err != nil || code != http.StatusOK {
			t.Fatalf("/healthz: %d %s", code, b)
		}
		return h.Status == "degraded" && strings.Contains(h.NATS, "targets could not be read")
	})
}

// A foreman whose node of a NATS cluster froze (a paused VM, a wedged process: its
// connections stay open, nothing answers) moves to another node within seconds: nats.go's
// default pings (every 2 minutes, two unanswered) kept it on the frozen node for 4 to 6
// minutes, all its submits answered 503, its worker idle and its running job's lease left
// to lapse (the job then ran again on another Mac), while the other two nodes served.
func TestClusterNodeThatFreezesIsLeft(t *testing.T) {
	cl := brokertest.NewCluster(t, 3)
	var frs []*freezer
	var urls []string
	for _, ns := range cl.Nodes {
		f := newFreezer(t, ns.ClientURL())
		frs = append(frs, f)
		urls = append(urls, f.url())
	}
	mac := ollamatest.New(t)
	fa := startForeman(t, strings.Join(urls, ","), "mac-a", mac.URL, func(c *app.Config) { c.NATSReplicas = 3 })
	waitTargets(t, fa, 1)
	var frozen *freezer
	for _, f := range frs {
		if f.connected() {
			if frozen != nil {
				t.Fatal("foreman has connections to two nodes")
			}
			frozen = f
		}
	}
	if frozen == nil {
		t.Fatal("foreman's connection passes through no node's freezer")
	}
	frozen.freeze(true)
	defer frozen.freeze(false) // before the foreman's shutdown, registered earlier, runs
	const body = `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`
	eventually(t, 60*time.Second, "a submit through the foreman is taken again", func() bool {
		code, _ := call(t, fa, http.MethodPost, "/jobs", body)
		return code == http.StatusAccepted
	})
}
