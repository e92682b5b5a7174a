package broker

import (
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Stream, bucket and subject names: the external contract NATS clients rely on.
const (
	QueueStream     = "FOREMAN_QUEUE"
	JobsBucket      = "FOREMAN_JOBS"
	ArtifactsBucket = "FOREMAN_ARTIFACTS"

	queuePrefix = "foreman.queue."
	jobPrefix   = "foreman.job."
	// QueueWildcard covers both forms of queue subject (see QueueKey).
	QueueWildcard = "foreman.queue.>"
	// SubmitSubject takes a POST /jobs body by request/reply.
	SubmitSubject = "foreman.jobs.submit"
	// StateWildcard matches every job's state events.
	StateWildcard = "foreman.job.*.state"
	// JobSubjects matches every job's stream and state subjects: what NATS clients may
	// read.
	JobSubjects = jobPrefix + ">"
)

// Headers on queue messages and stream chunks.
const (
	HeaderJobID   = "Foreman-Job-Id"
	HeaderModel   = "Foreman-Model"
	HeaderKind    = "Foreman-Kind"
	HeaderBodyRef = "Foreman-Body-Ref"
	// HeaderGateway is the boot id of the gateway whose caller waits for a sync job.
	HeaderGateway = "Foreman-Gateway"
	HeaderSeq     = "Foreman-Seq"
	HeaderFinal   = "Foreman-Final"
	HeaderError   = "Foreman-Error"
	// HeaderMore rides on every piece of a frame too large for one message but its last:
	// more of the frame follows (StreamWriter.Frame).
	HeaderMore = "Foreman-More"
	// HeaderContentType rides on a job's first stream frame: the target's Content-Type.
	HeaderContentType = "Foreman-Content-Type"
	// HeaderStatus rides on a "failed" final marker when the target answered non-2xx.
	HeaderStatus = "Foreman-Status"
	// HeaderRequeued marks a queue message the worker published again for a job whose
	// first one reached the queue's MaxAge while it ran (Store.Requeue).
	HeaderRequeued = "Foreman-Requeued"
	// HeaderPriority and HeaderProgram name a queued job's class and program (its
	// subject says the same in tokens).
	HeaderPriority = "Foreman-Priority"
	HeaderProgram  = "Foreman-Program"
	// HeaderRefresh marks a job record revision written by Store.Refresh: the same record
	// again, re-announced on its state subject, which no webhook should report.
	HeaderRefresh = "Foreman-Refresh"
	// HeaderSameState marks a job record revision that keeps the state and attempt of the
	// one before (a cancel requested of a running job, an artifact added): re-announced
	// on the state subject like every write, but no state change for webhooks.
	HeaderSameState = "Foreman-Same-State"
	// HeaderRecordState rides on a job record revision whose writer says its state (a
	// submit's record, a refresh): a listing that filters by state reads it from the
	// bucket's headers and skips a job in another state without reading its record
	// (ADR-0025). A revision without it is read, as every one was.
	HeaderRecordState = "Foreman-State"
)

// StateSubject is where every state change of job id is announced.
func StateSubject(id string) string { return jobPrefix + id + ".state" }

// StreamSubject carries the response chunks of job id while it runs.
func StreamSubject(id string) string { return jobPrefix + id + ".stream" }

// QueueSubject is the queue subject of a queue key (QueueKey.String; a plain model token
// is the key of the model's default jobs).
func QueueSubject(token string) string { return queuePrefix + token }

// TokenFromSubject returns the queue key of a queue subject.
func TokenFromSubject(subject string) (string, bool) {
	return strings.CutPrefix(subject, queuePrefix)
}

// TokenValid reports whether token is a queue key foreman makes (ParseQueueKey): the only
// queue subjects foreman publishes to.
func TokenValid(token string) bool {
	_, err := ParseQueueKey(token)
	return err == nil
}

// LaterQueueKey reports whether token is the queue key of a later foreman: a model
// token this build reads (its first part), and after it a form this build does not make
// (a class, a dimension it does not know: ParseQueueKey refuses it). Its jobs are that
// foreman's to run (ADR-0099).
func LaterQueueKey(token string) bool {
	model, _, _ := strings.Cut(token, ".")
	return modelTokenValid(model) && !TokenValid(token)
}

// modelTokenValid reports whether token is one ModelToken makes, or made in an earlier
// foreman: the lower-case base32 of a normalized model name. The normal form changed
// (f24b732: "library/llama3" is "llama3:latest" now, no longer "library/llama3:latest"),
// so a job queued before an upgrade may wait on a token this build would not make for
// its model; taken for a subject of no model, its jobs were removed unrun (ADR-0099).
func modelTokenValid(token string) bool {
	b, err := tokenEncoding.DecodeString(strings.ToUpper(token))
	if err != nil {
		return false
	}
	name := string(b)
	if name == "" || len(name) > maxModelLen || name != strings.ToLower(strings.TrimSpace(name)) {
		return false
	}
	_, err = ModelToken(name)
	return err == nil && strings.ToLower(tokenEncoding.EncodeToString(b)) == token
}

// ModelOnToken reports whether the jobs of model belong on model token token: the token
// ModelToken makes of it, or an earlier foreman's token of a name this build normalizes
// as it does model (modelTokenValid).
func ModelOnToken(model, token string) bool {
	t, err := ModelToken(model)
	if err != nil {
		return false
	}
	if t == token {
		return true
	}
	if !modelTokenValid(token) {
		return false
	}
	name, _ := ModelFromToken(token)
	now, err := ModelToken(name)
	return err == nil && now == t
}

// ErrBadModel is returned for a model name that cannot be queued.
var ErrBadModel = errors.New("invalid model name")

// maxModelLen keeps "m-"+token within the 255-byte consumer name limit.
const maxModelLen = 150

// maxModelPadding is the white space a model name may carry around it beyond maxModelLen.
// The gateway refuses such names (Ollama does); the broker still takes them, as records
// of earlier versions may carry them.
const maxModelPadding = 16

var tokenEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// ModelToken encodes a model name for use in subjects, consumer names and file names:
// lower-case base32 of the normalized name. The alphabet [a-z2-7] has no '.', '*', '>',
// spaces or upper case, so the token is safe everywhere and case-insensitive filesystems
// cannot collide two models.
func ModelToken(model string) (string, error) {
	if len(model) > maxModelLen+maxModelPadding {
		// The name as sent is what a record and a queue message carry.
		return "", fmt.Errorf("%w: longer than %d bytes", ErrBadModel, maxModelLen)
	}
	n := ollama.NormalizeModel(model)
	if n == "" {
		return "", fmt.Errorf("%w: empty", ErrBadModel)
	}
	if len(n) > maxModelLen {
		return "", fmt.Errorf("%w: longer than %d bytes", ErrBadModel, maxModelLen)
	}
	return strings.ToLower(tokenEncoding.EncodeToString([]byte(n))), nil
}

// ModelFromToken reverses ModelToken; it yields the name normalized as this build does,
// also from an earlier foreman's token (modelTokenValid).
func ModelFromToken(token string) (string, error) {
	b, err := tokenEncoding.DecodeString(strings.ToUpper(token))
	if err != nil {
		return "", fmt.Errorf("%w: bad token %q", ErrBadModel, token)
	}
	if n := ollama.NormalizeModel(string(b)); n != "" {
		return n, nil
	}
	return string(b), nil
}

// ConsumerName is the durable pull consumer of one queue subject. A plain model token's
// name is what it always was; a long key that would pass the 255-byte limit is hashed.
func ConsumerName(token string) string {
	name := "m-" + strings.ReplaceAll(token, ".", "-")
	if len(name) > 255 {
		sum := sha256.Sum256([]byte(token))
		name = "q-" + strings.ToLower(tokenEncoding.EncodeToString(sum[:20]))
	}
	return name
}
