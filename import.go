package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// importBatch is an import's rows, read from a JSON array or a CSV file,
// before validation.
type importBatch[T any] struct {
	items []T
	csv   bool
}

// checker returns the checker for row i, so that errors name "#/3/phone" in
// a JSON import and "row 4: phone ..." in a CSV one.
func (b importBatch[T]) checker(i int) *checker {
	if b.csv {
		return &checker{row: i + 1}
	}
	return &checker{prefix: "#/" + strconv.Itoa(i)}
}

// where names row i as errors do: "row 4" in CSV, "#/3" in JSON.
func (b importBatch[T]) where(i int) string {
	if b.csv {
		return "row " + strconv.Itoa(i+1)
	}
	return "#/" + strconv.Itoa(i)
}

// validate runs check on every row and returns one validationError naming
// every bad field of every row, or nil.
func (b importBatch[T]) validate(check func(i int, item *T, c *checker)) error {
	if len(b.items) == 0 {
		return &validationError{detail: "the import holds no rows", fields: []fieldError{{Pointer: "#", Detail: "must hold at least one row"}}}
	}
	var all []fieldError
	for i := range b.items {
		c := b.checker(i)
		check(i, &b.items[i], c)
		all = append(all, c.fields...)
	}
	if len(all) > 0 {
		return &validationError{detail: strconv.Itoa(len(all)) + " problems in the import; nothing was imported", fields: all}
	}
	return nil
}

// readImport reads an import body: a JSON array of objects decoded like a
// single create, or CSV whose header row names the same fields. columns lists
// the CSV columns allowed, fromCSV builds a row from a record keyed by column.
func readImport[T any](w http.ResponseWriter, r *http.Request, columns []string, fromCSV func(rec map[string]string) T) (importBatch[T], error) {
	body := http.MaxBytesReader(w, r.Body, maxImportBody)
	switch mediaType(r) {
	case "application/json":
		var raw []json.RawMessage
		if err := decodeJSONBody(body, &raw); err != nil {
			return importBatch[T]{}, err
		}
		b := importBatch[T]{items: make([]T, len(raw))}
		for i, item := range raw {
			if err := decodeJSONBody(strings.NewReader(string(item)), &b.items[i]); err != nil {
				return b, inElement(err, i)
			}
		}
		return b, nil
	case "text/csv":
		return readCSV(body, columns, fromCSV)
	}
	return importBatch[T]{}, &requestError{status: http.StatusUnsupportedMediaType, detail: "Content-Type must be application/json or text/csv"}
}

// inElement points a decoding error of array element i at that element.
func inElement(err error, i int) error {
	var re *requestError
	if !errors.As(err, &re) {
		return err
	}
	prefixed := &requestError{status: re.status, detail: "element " + strconv.Itoa(i) + ": " + re.detail}
	for _, f := range re.fields {
		f.Pointer = "#/" + strconv.Itoa(i) + strings.TrimPrefix(f.Pointer, "#")
		prefixed.fields = append(prefixed.fields, f)
	}
	return prefixed
}

func readCSV[T any](body io.Reader, columns []string, fromCSV func(rec map[string]string) T) (importBatch[T], error) {
	b := importBatch[T]{csv: true}
	cr := csv.NewReader(body)
	cr.FieldsPerRecord = 0 // every row as wide as the header
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return b, &requestError{status: http.StatusBadRequest, detail: "the CSV must start with a header row: " + strings.Join(columns, ",")}
	}
	if err != nil {
		return b, csvError(err)
	}
	for i, name := range header {
		header[i] = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(name, "\ufeff")))
		if !contains(columns, header[i]) {
			return b, &requestError{status: http.StatusBadRequest, detail: "unknown CSV column " + strconv.Quote(name) + "; columns are " + strings.Join(columns, ",")}
		}
		if contains(header[:i], header[i]) {
			return b, &requestError{status: http.StatusBadRequest, detail: "CSV column " + strconv.Quote(name) + " appears twice"}
		}
	}
	for row := 1; ; row++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return b, csvError(err)
		}
		fields := make(map[string]string, len(header))
		for i, name := range header {
			fields[name] = strings.TrimSpace(rec[i])
		}
		b.items = append(b.items, fromCSV(fields))
	}
}

// csvError reports a CSV syntax error with its line, or a body too large.
func csvError(err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return jsonError(err)
	}
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return &requestError{status: http.StatusBadRequest, detail: "malformed CSV on line " + strconv.Itoa(pe.Line) + ": " + pe.Err.Error()}
	}
	return &requestError{status: http.StatusBadRequest, detail: "malformed CSV: " + err.Error()}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
