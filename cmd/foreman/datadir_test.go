package main

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// A data directory removed while foreman runs (a cleaner of /tmp, an rm -rf): the embedded
// server goes on writing into files no start will find again, so a 202 would promise a job
// the next start does not have. foreman takes none: POST /jobs answers 503 with the
// store's message, and /healthz names the directory.
func TestDataDirRemovedRefusesSubmits(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	dir := filepath.Join(t.TempDir(), "data")
	a := testApp(t, fake.URL, map[string]string{"FOREMAN_DATA_DIR": dir})
	waitFor(t, "the first poll", func() bool { return a.Inventory().Snapshot().Polled })
	postJob(t, a.Addr(), "tiny-a") // taken while the directory is in place
	// The server may be creating a file in it meanwhile ("directory not empty"): again.
	waitFor(t, "the data directory removed", func() bool { return os.RemoveAll(dir) == nil })
	// Found by the watch, before any write meets it.
	waitFor(t, "the store knowing the fault", func() bool { return a.Store().WriteFault() != nil })
	var last string
	waitFor(t, "submits refused", func() bool {
		resp, err := http.Post("http://"+a.Addr()+"/jobs", "application/json",
			strings.NewReader(`{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&out)
		last = out.Error
		return resp.StatusCode == http.StatusServiceUnavailable && strings.HasPrefix(out.Error, "job store cannot write")
	})
	code, h := getHealthz(t, a.Addr())
	if nats, _ := h["nats"].(string); code == http.StatusOK && h["status"] == "ok" || !strings.Contains(nats, "data directory "+dir+" was removed or replaced") {
		t.Errorf("/healthz %d %v; want the removed directory named (last submit: %q)", code, h, last)
	}
}
