package gateway

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"mime"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// inlineArtifactLimit is the largest artifact GET /jobs/{id} embeds; larger ones are
// linked by URL.
const inlineArtifactLimit = 256 << 10

// jobView is a job as the /jobs API shows it.
type jobView struct {
	ID         string          `json:"id"`
	Kind       broker.Kind     `json:"kind"`
	Model      string          `json:"model"`
	State      broker.State    `json:"state"`
	Attempts   int             `json:"attempts"`
	CreatedAt  time.Time       `json:"created_at"`
	StartedAt  *time.Time      `json:"started_at"`
	FinishedAt *time.Time      `json:"finished_at"`
	Error      string          `json:"error"`
	Result     json.RawMessage `json:"result"`
	Artifacts  []artifactView  `json:"artifacts"`
	Webhook    *broker.Webhook `json:"webhook,omitempty"`
	// Priority is the job's class (normal for records from before priorities); Program
	// is its program, "" for the anonymous one.
	Priority broker.Priority `json:"priority"`
	Program  string          `json:"program"`
	// CancelRequested is the reason of a cancel the running job has not yet acted on.
	CancelRequested string `json:"cancel_requested,omitempty"`
	// Runner is the target name of the foreman whose worker runs the job's attempt, or
	// ran its last one (ADR-0064). RunnerGone, shown by GET /jobs/{id} for a running job,
	// says that foreman is gone: the job runs again once its queue message comes back.
	Runner     string `json:"runner,omitempty"`
	RunnerGone bool   `json:"runner_gone,omitempty"`
	// QueuePosition (1 runs next) and ETA (the expected start) are shown by
	// GET /jobs/{id} for a waiting job only (queue.go).
	QueuePosition *int       `json:"queue_position,omitempty"`
	ETA           *time.Time `json:"eta,omitempty"`
	// LeftElsewhere, with them, says this foreman's worker leaves the job to another Mac
	// that has its model for now (broker.QueuedJob.LeftElsewhere, ADR-0066).
	LeftElsewhere bool `json:"left_elsewhere,omitempty"`
	// WaitingElsewhere, shown instead of them, says this foreman's worker leaves the
	// waiting job to other Macs: its model is not on this foreman's Mac, or that Mac is
	// down and another has it (broker.QueueView.WaitingElsewhere).
	WaitingElsewhere bool `json:"waiting_elsewhere,omitempty"`
}

// artifactView carries either the data (small artifacts) or the URL to fetch it.
type artifactView struct {
	Name        string `json:"name"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	// Data is the artifact as text for text and JSON types, else base64 (Encoding says so).
	Data     *string `json:"data,omitempty"`
	Encoding string  `json:"encoding,omitempty"`
	URL      string  `json:"url,omitempty"`
}

// jobView renders j. With inline, small artifacts are read and embedded and a result
// kept only as an artifact is filled in; lists skip that and link every artifact.
func (s *Server) jobView(ctx context.Context, j *broker.Job, inline bool) jobView {
	v := jobView{
		ID: j.ID, Kind: j.Kind, Model: j.Model, State: j.State, Attempts: j.Attempt,
		CreatedAt: j.CreatedAt, StartedAt: j.StartedAt, FinishedAt: j.FinishedAt,
		Error: j.Error, Result: j.Result, Artifacts: []artifactView{}, Webhook: j.Webhook,
		CancelRequested: j.CancelRequested, Priority: j.Priority, Program: j.Program,
	}
	v.Runner, _ = j.CurrentRunner()
	if inline {
		v.RunnerGone = s.store.RunnerGone(ctx, j)
	}
	if v.Priority == "" {
		v.Priority = broker.PriorityNormal
	}
	if len(v.Result) == 0 {
		v.Result = nil
	}
	for _, a := range j.Artifacts {
		av := artifactView{Name: a.Name, ContentType: a.ContentType, Size: a.Size}
		var data []byte
		if held, ok := j.HeldArtifact(a); ok && inline {
			data = held // the record at hand holds it: no second read
		} else if inline && a.Size <= inlineArtifactLimit {
			if _, d, err := s.store.GetArtifact(ctx, j.ID, a.Name); err == nil {
				data = d
			} else {
				s.log.Warn("read artifact", "job_id", j.ID, "model", j.Model, "artifact", a.Name, "err", err)
			}
		}
		if data == nil {
			av.URL = "/jobs/" + j.ID + "/artifacts/" + url.PathEscape(a.Name)
		} else {
			str := string(data)
			if !isText(a.ContentType) || !utf8.Valid(data) {
				str, av.Encoding = base64.StdEncoding.EncodeToString(data), "base64"
			}
			av.Data = &str
			if a.Name == broker.ResultArtifact && v.Result == nil && json.Valid(data) {
				v.Result = data
			}
		}
		v.Artifacts = append(v.Artifacts, av)
	}
	return v
}

// isText reports whether a content type is shown as text: text/*, JSON and NDJSON.
func isText(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false
	}
	return strings.HasPrefix(mt, "text/") || mt == "application/json" || strings.HasSuffix(mt, "+json") ||
		mt == "application/x-ndjson" || mt == "application/ndjson"
}
