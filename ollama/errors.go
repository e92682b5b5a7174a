package ollama

import (
	"fmt"
	"net/http"
)

// ConnectionError means the target could not be reached or the connection
// failed before the response was complete: refused, reset, EOF before the
// headers, or a stream cut mid-way. The request may be retried.
type ConnectionError struct {
	Op  string // what was being done: "dial", "read stream", ...
	URL string
	Err error
}

func (e *ConnectionError) Error() string {
	return fmt.Sprintf("ollama %s %s: %v", e.Op, e.URL, e.Err)
}

func (e *ConnectionError) Unwrap() error { return e.Err }

// HTTPError means the target answered with a non-2xx status. Message is the
// text of Ollama's {"error": ...} body, or the trimmed body if it is not JSON.
type HTTPError struct {
	StatusCode int
	Message    string
}

func (e *HTTPError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("ollama: HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	return fmt.Sprintf("ollama: HTTP %d: %s", e.StatusCode, e.Message)
}
