package main

import (
	"encoding/json"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// TestDocumentedNATSSubjectsAndHeaders keeps the README's NATS subject table true to what
// a client on the listener sees: it subscribes to foreman.job.> as the client user, runs a
// job that ends done and one whose target answers 500, and checks that each subject it
// receives is a row of the table (the job id written <id>) and that each Foreman-* header
// on a message is named in that subject's row. A header foreman sets that the table
// leaves out (the stream's Foreman-Content-Type, a failed final marker's Foreman-Error
// and Foreman-Status) is one a NATS client cannot learn of but from the code.
func TestDocumentedNATSSubjectsAndHeaders(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // subject with <id> -> its row
	for _, line := range strings.Split(string(readme), "\n") {
		if m := regexp.MustCompile("^\\| `(foreman\\.[^`]+)` \\|").FindStringSubmatch(line); m != nil {
			rows[m[1]] = line
		}
	}
	if rows["foreman.job.<id>.stream"] == "" || rows["foreman.job.<id>.state"] == "" {
		t.Fatalf("README: no NATS subject table with foreman.job.<id>.state and .stream rows (found %d rows)", len(rows))
	}

	fake := ollamatest.New(t)
	a := testApp(t, fake.URL, map[string]string{
		"FOREMAN_NATS_LISTEN": "127.0.0.1:0", "FOREMAN_NATS_USER": "app", "FOREMAN_NATS_PASSWORD": "secret",
	})
	nc, err := nats.Connect(a.NATSListen(), nats.UserInfo("app", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msgs := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe("foreman.job.>", msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	submit := func() string {
		t.Helper()
		resp, err := http.Post("http://"+a.Addr()+"/jobs", "application/json",
			strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r struct {
			JobID string `json:"job_id"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /jobs: %d %v", resp.StatusCode, err)
		}
		return r.JobID
	}
	// seen maps each subject (id as <id>) to the Foreman-* headers seen on it.
	seen := map[string]map[string]bool{}
	finals := 0
	collect := func(id, final string) {
		t.Helper()
		deadline := time.After(15 * time.Second)
		for {
			select {
			case m := <-msgs:
				subject := strings.Replace(m.Subject, "."+strings.Split(m.Subject, ".")[2]+".", ".<id>.", 1)
				if seen[subject] == nil {
					seen[subject] = map[string]bool{}
				}
				for h := range m.Header {
					if strings.HasPrefix(h, "Foreman-") {
						seen[subject][h] = true
					}
				}
				if m.Subject == "foreman.job."+id+".stream" && m.Header.Get("Foreman-Final") != "" {
					if got := m.Header.Get("Foreman-Final"); got != final {
						t.Fatalf("job %s ended %s on its stream; want %s", id, got, final)
					}
					finals++
					return
				}
			case <-deadline:
				t.Fatalf("no final marker of job %s on its stream within 15s", id)
			}
		}
	}
	collect(submit(), "done")
	fake.FailNext(1, ollamatest.Fail500)
	collect(submit(), "failed")
	if finals != 2 {
		t.Fatalf("saw %d final markers, want 2", finals)
	}

	for subject, headers := range seen {
		row, ok := rows[subject]
		if !ok {
			t.Errorf("README: the NATS subject table has no row for %s, which a client on the listener receives", subject)
			continue
		}
		for h := range headers {
			if !strings.Contains(row, "`"+h) {
				t.Errorf("README: the %s row does not name the header %s, which foreman sets on it", subject, h)
			}
		}
	}
}
