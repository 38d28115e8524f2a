// Uses the types that scripts/openapi-clients.sh generates with openapi-typescript from the API's
// OpenAPI document (written next to this file as api.d.ts); `tsc --strict` checks it.
import type { components, operations, paths } from "./api";

type Schemas = components["schemas"];
type ErrorResponse = Schemas["ErrorResponse"];
type ErrorCode = Schemas["ErrorCode"];
type Job = Schemas["Job"];

type CreateJob = operations["createJob"];
type Created = CreateJob["responses"][201]["content"]["application/json"];
type QueueFull = paths["/v1/jobs"]["post"]["responses"][503]["content"]["application/json"];
type ServerError = paths["/v1/jobs/{id}"]["get"]["responses"][500]["content"]["application/json"];

const retryableCodes: readonly ErrorCode[] = ["unavailable", "queue_full"];

export function shouldRetry(answer: ErrorResponse): boolean {
    const { code, message, retryable } = answer.error;
    const flag: boolean = retryable;
    const text: string = message;
    return flag || (retryableCodes.includes(code) && text.length > 0);
}

export function errors(full: QueueFull, failed: ServerError): boolean[] {
    return [shouldRetry(full), shouldRetry(failed)];
}

export function firstLine(job: Created | Job): string | undefined {
    if (job.status !== "succeeded" || job.result === undefined) {
        return undefined;
    }
    const [corner] = job.result.lines[0]?.box ?? [];
    return `${job.result.lines[0]?.text ?? ""} at ${corner?.join(",") ?? "?"} of ${job.result.width}x${job.result.height}`;
}

// Documents: every page's words, and the result in another format.
export function pageWords(job: Job): string[] {
    return (job.result?.pages ?? []).flatMap((page) =>
        page.lines.flatMap((line) => line.words.map((word) => `${page.page}:${word.text}@${word.box[0]?.join(",") ?? "?"}`)),
    );
}

type ResultAnswer = operations["getJobResult"]["responses"][200]["content"];
export function resultText(answer: ResultAnswer["text/plain"], hocr: ResultAnswer["application/xhtml+xml"]): number {
    return answer.length + hocr.length;
}

export const request: Schemas["CreateJobRequest"] = {
    content_type: "image/png",
    content_length: 10,
    priority: "express",
    callback_url: "https://hooks.example.com/ocr",
    metadata: { order: 42 },
};

export function uploadHeaders(job: Job): Record<string, string> {
    return job.upload?.method === "PUT" ? job.upload.headers : {};
}
