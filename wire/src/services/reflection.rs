//! Server reflection (`grpc.reflection.v1.ServerReflection` and the older
//! `grpc.reflection.v1alpha.ServerReflection`, which many clients still ask
//! for): lists the services and serves the `FileDescriptorProto`s of
//! [`proto::FILE_DESCRIPTOR_SET`](crate::proto::FILE_DESCRIPTOR_SET), the same
//! descriptors the codegen used, so what a client discovers is what we speak.
//!
//! A request for a file or symbol answers with the defining file followed by
//! its transitive dependencies (each file once), so a client can build its
//! descriptor pool from one answer. Unknown files and symbols answer with an
//! `error_response` carrying NOT_FOUND; the stream stays open.
//!
//! The index is built once per [`register`] call (one per executor) and
//! shared by every call on that executor through an `Rc`.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use bytes::Bytes;
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

use crate::proto::grpc::reflection::{v1, v1alpha};
use crate::server::Router;
use crate::status::{Code, Status};
use crate::{Request, ResponseSink, Streaming};

/// Fully-qualified name of the v1 reflection service.
pub const SERVICE_NAME_V1: &str = "grpc.reflection.v1.ServerReflection";
/// Fully-qualified name of the v1alpha reflection service.
pub const SERVICE_NAME_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

const PATH_V1: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const PATH_V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Why a descriptor set could not be indexed.
#[derive(Debug, thiserror::Error)]
pub enum ReflectionError {
    /// The bytes are not an encoded `FileDescriptorSet`.
    #[error("file descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A file imports one that the set does not contain.
    #[error("file {file:?} imports {dependency:?}, which the descriptor set lacks")]
    MissingDependency {
        /// The importing file.
        file: String,
        /// The missing import.
        dependency: String,
    },
}

/// One file of the set, kept encoded (answers copy no descriptor structs).
#[derive(Debug)]
struct IndexedFile {
    encoded: Bytes,
    dependencies: Vec<String>,
}

/// Files by name and symbols by fully-qualified name, answering reflection
/// requests. Immutable once built.
#[derive(Debug)]
pub struct DescriptorIndex {
    files: HashMap<String, IndexedFile>,
    /// Fully-qualified symbol (no leading dot) -> defining file.
    symbols: HashMap<String, String>,
    /// Message types (for `all_extension_numbers_of_type`).
    messages: HashSet<String>,
    /// Services `list_services` reports, sorted.
    services: Vec<String>,
}

impl DescriptorIndex {
    /// Indexes an encoded `FileDescriptorSet`; `services` is what
    /// `list_services` answers (sorted and deduplicated here).
    pub fn from_encoded_set(
        encoded_set: &[u8],
        mut services: Vec<String>,
    ) -> Result<DescriptorIndex, ReflectionError> {
        let set = FileDescriptorSet::decode(encoded_set)?;
        let mut index = DescriptorIndex {
            files: HashMap::with_capacity(set.file.len()),
            symbols: HashMap::new(),
            messages: HashSet::new(),
            services: Vec::new(),
        };
        for file in &set.file {
            index.add_file(file);
        }
        for (name, file) in &index.files {
            if let Some(missing) = file
                .dependencies
                .iter()
                .find(|d| !index.files.contains_key(*d))
            {
                return Err(ReflectionError::MissingDependency {
                    file: name.clone(),
                    dependency: missing.clone(),
                });
            }
        }
        services.sort();
        services.dedup();
        index.services = services;
        Ok(index)
    }

    /// The services `list_services` reports.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The named file then its transitive dependencies, each once, encoded;
    /// `None` if the set has no such file.
    pub fn file_with_dependencies(&self, name: &str) -> Option<Vec<Bytes>> {
        self.files.get(name)?;
        let mut seen: HashSet<&str> = HashSet::new();
        let mut pending = vec![name];
        let mut out = Vec::new();
        // Bounded: each file is pushed to `out` at most once.
        while let Some(next) = pending.pop() {
            if !seen.insert(next) {
                continue;
            }
            let file = self.files.get(next)?;
            out.push(file.encoded.clone());
            pending.extend(file.dependencies.iter().rev().map(String::as_str));
        }
        Some(out)
    }

    /// The file defining `symbol` (a package-qualified service, method,
    /// message, enum or enum value; a leading `.` is accepted) and its
    /// dependencies.
    pub fn file_containing_symbol(&self, symbol: &str) -> Option<Vec<Bytes>> {
        let symbol = symbol.strip_prefix('.').unwrap_or(symbol);
        self.file_with_dependencies(self.symbols.get(symbol)?)
    }

    /// The answer to one reflection request (v1 messages).
    pub fn answer(&self, request: v1::ServerReflectionRequest) -> v1::ServerReflectionResponse {
        use v1::server_reflection_request::MessageRequest;
        use v1::server_reflection_response::MessageResponse;

        let response = match &request.message_request {
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(v1::ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| v1::ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            Some(MessageRequest::FileByFilename(name)) => {
                files_or_not_found(self.file_with_dependencies(name), "file", name)
            }
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                files_or_not_found(self.file_containing_symbol(symbol), "symbol", symbol)
            }
            Some(MessageRequest::FileContainingExtension(extension)) => error_response(
                Code::NOT_FOUND,
                format!(
                    "extension {} of {} not found",
                    extension.extension_number, extension.containing_type
                ),
            ),
            Some(MessageRequest::AllExtensionNumbersOfType(type_name)) => {
                self.extension_numbers(type_name)
            }
            None => error_response(Code::INVALID_ARGUMENT, "empty reflection request".into()),
        };
        v1::ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(response),
        }
    }

    /// No file in the set declares extensions: a known message type has none.
    fn extension_numbers(
        &self,
        type_name: &str,
    ) -> v1::server_reflection_response::MessageResponse {
        let name = type_name.strip_prefix('.').unwrap_or(type_name);
        if !self.messages.contains(name) {
            return error_response(
                Code::NOT_FOUND,
                format!("message type {type_name} not found"),
            );
        }
        v1::server_reflection_response::MessageResponse::AllExtensionNumbersResponse(
            v1::ExtensionNumberResponse {
                base_type_name: name.to_owned(),
                extension_number: Vec::new(),
            },
        )
    }

    fn add_file(&mut self, file: &FileDescriptorProto) {
        let file_name = file.name().to_owned();
        let prefix = match file.package() {
            "" => String::new(),
            package => format!("{package}."),
        };
        for service in &file.service {
            let service_name = format!("{prefix}{}", service.name());
            for method in &service.method {
                self.add_symbol(format!("{service_name}.{}", method.name()), &file_name);
            }
            self.add_symbol(service_name, &file_name);
        }
        for message in &file.message_type {
            self.add_message(&prefix, message, &file_name);
        }
        for enumeration in &file.enum_type {
            self.add_enum(&prefix, enumeration, &file_name);
        }
        for extension in &file.extension {
            self.add_symbol(format!("{prefix}{}", extension.name()), &file_name);
        }
        self.files.insert(
            file_name,
            IndexedFile {
                encoded: Bytes::from(file.encode_to_vec()),
                dependencies: file.dependency.clone(),
            },
        );
    }

    fn add_message(&mut self, prefix: &str, message: &DescriptorProto, file_name: &str) {
        let name = format!("{prefix}{}", message.name());
        let nested_prefix = format!("{name}.");
        for nested in &message.nested_type {
            self.add_message(&nested_prefix, nested, file_name);
        }
        for enumeration in &message.enum_type {
            self.add_enum(&nested_prefix, enumeration, file_name);
        }
        for extension in &message.extension {
            self.add_symbol(format!("{nested_prefix}{}", extension.name()), file_name);
        }
        self.messages.insert(name.clone());
        self.add_symbol(name, file_name);
    }

    /// An enum and its values; values are scoped like the enum itself
    /// (protobuf's C++ scoping rule).
    fn add_enum(&mut self, prefix: &str, enumeration: &EnumDescriptorProto, file_name: &str) {
        for value in &enumeration.value {
            self.add_symbol(format!("{prefix}{}", value.name()), file_name);
        }
        self.add_symbol(format!("{prefix}{}", enumeration.name()), file_name);
    }

    fn add_symbol(&mut self, symbol: String, file_name: &str) {
        // protox rejected duplicate symbols at build time; keep the first.
        self.symbols
            .entry(symbol)
            .or_insert_with(|| file_name.to_owned());
    }
}

fn files_or_not_found(
    files: Option<Vec<Bytes>>,
    kind: &str,
    name: &str,
) -> v1::server_reflection_response::MessageResponse {
    match files {
        Some(file_descriptor_proto) => {
            v1::server_reflection_response::MessageResponse::FileDescriptorResponse(
                v1::FileDescriptorResponse {
                    file_descriptor_proto,
                },
            )
        }
        None => error_response(Code::NOT_FOUND, format!("{kind} {name} not found")),
    }
}

fn error_response(code: Code, message: String) -> v1::server_reflection_response::MessageResponse {
    v1::server_reflection_response::MessageResponse::ErrorResponse(v1::ErrorResponse {
        error_code: code.0,
        error_message: message,
    })
}

/// Re-reads `message` as `T`: v1 and v1alpha messages share names, tags and
/// types, so their encodings are interchangeable.
fn transcode<T: Message + Default>(message: &impl Message) -> Result<T, Status> {
    T::decode(message.encode_to_vec().as_slice())
        .map_err(|error| Status::internal(format!("reflection v1/v1alpha transcoding: {error}")))
}

/// Registers both reflection services on `router`, answering from
/// [`proto::FILE_DESCRIPTOR_SET`](crate::proto::FILE_DESCRIPTOR_SET).
/// `service_names` is what `list_services` reports (typically
/// `router.service_names()`); the two reflection services are added to it.
///
/// Panics if the build-time descriptor set does not index (a build defect
/// that the crate's tests catch, never a runtime input).
pub fn register(router: &mut Router, mut service_names: Vec<String>) {
    service_names.push(SERVICE_NAME_V1.to_owned());
    service_names.push(SERVICE_NAME_V1ALPHA.to_owned());
    let index = DescriptorIndex::from_encoded_set(crate::proto::FILE_DESCRIPTOR_SET, service_names)
        .expect("build.rs emits a complete, decodable descriptor set");
    register_index(router, Rc::new(index));
}

/// Registers both reflection services answering from `index`.
pub fn register_index(router: &mut Router, index: Rc<DescriptorIndex>) {
    let v1_index = Rc::clone(&index);
    router.bidi_streaming(PATH_V1, move |request, sink| {
        serve_v1(Rc::clone(&v1_index), request, sink)
    });
    router.bidi_streaming(PATH_V1ALPHA, move |request, sink| {
        serve_v1alpha(Rc::clone(&index), request, sink)
    });
}

async fn serve_v1(
    index: Rc<DescriptorIndex>,
    request: Request<Streaming<v1::ServerReflectionRequest>>,
    mut sink: ResponseSink<v1::ServerReflectionResponse>,
) -> Result<(), Status> {
    let mut requests = request.into_inner();
    // One answer per request; ends when the client half-closes.
    while let Some(request) = requests.message().await? {
        sink.send(index.answer(request)).await?;
    }
    Ok(())
}

async fn serve_v1alpha(
    index: Rc<DescriptorIndex>,
    request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    mut sink: ResponseSink<v1alpha::ServerReflectionResponse>,
) -> Result<(), Status> {
    let mut requests = request.into_inner();
    while let Some(request) = requests.message().await? {
        let answer = index.answer(transcode(&request)?);
        sink.send(transcode(&answer)?).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;

    fn index() -> DescriptorIndex {
        DescriptorIndex::from_encoded_set(
            crate::proto::FILE_DESCRIPTOR_SET,
            vec!["b.S".into(), "a.S".into(), "a.S".into()],
        )
        .expect("built-in set indexes")
    }

    fn names(files: &[Bytes]) -> Vec<String> {
        files
            .iter()
            .map(|f| {
                FileDescriptorProto::decode(f.clone())
                    .expect("decodes")
                    .name()
                    .to_owned()
            })
            .collect()
    }

    fn ask(request: MessageRequest) -> MessageResponse {
        let request = v1::ServerReflectionRequest {
            host: "h".into(),
            message_request: Some(request),
        };
        let response = index().answer(request.clone());
        assert_eq!(response.valid_host, "h");
        assert_eq!(response.original_request, Some(request));
        response.message_response.expect("has a response")
    }

    #[test]
    fn services_are_sorted_and_deduplicated() {
        assert_eq!(index().services(), ["a.S", "b.S"]);
    }

    #[test]
    fn symbol_lookup_returns_file_then_transitive_dependencies() {
        let idx = index();
        for symbol in [
            "grpc.testing.TestService",
            ".grpc.testing.TestService",
            "grpc.testing.TestService.UnaryCall",
        ] {
            let files = names(&idx.file_containing_symbol(symbol).expect("found"));
            assert_eq!(files[0], "grpc/testing/test.proto");
            assert_eq!(files.len(), 3, "test.proto + empty.proto + messages.proto");
            assert!(files.contains(&"grpc/testing/messages.proto".to_owned()));
        }
        let nested = idx
            .file_containing_symbol("grpc.health.v1.HealthCheckResponse.ServingStatus")
            .expect("nested enum found");
        assert_eq!(names(&nested), ["grpc/health/v1/health.proto"]);
        let log = idx
            .file_containing_symbol("shardlog.v1.Log")
            .expect("found");
        assert_eq!(names(&log)[0], "shardlog/v1/log.proto");
    }

    #[test]
    fn unknown_symbol_and_file_answer_not_found() {
        for request in [
            MessageRequest::FileContainingSymbol("no.Such".into()),
            MessageRequest::FileByFilename("no/such.proto".into()),
            MessageRequest::AllExtensionNumbersOfType("no.Such".into()),
        ] {
            match ask(request) {
                MessageResponse::ErrorResponse(error) => {
                    assert_eq!(error.error_code, Code::NOT_FOUND.0)
                }
                other => panic!("expected error_response, got {other:?}"),
            }
        }
    }

    #[test]
    fn list_services_and_file_by_name() {
        match ask(MessageRequest::ListServices(String::new())) {
            MessageResponse::ListServicesResponse(list) => assert_eq!(list.service.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        match ask(MessageRequest::FileByFilename(
            "grpc/testing/empty.proto".into(),
        )) {
            MessageResponse::FileDescriptorResponse(files) => {
                assert_eq!(
                    names(&files.file_descriptor_proto),
                    ["grpc/testing/empty.proto"]
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn v1alpha_transcodes_losslessly() {
        let request = v1alpha::ServerReflectionRequest {
            host: "x".into(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "grpc.testing.Empty".into(),
                ),
            ),
        };
        let as_v1: v1::ServerReflectionRequest = transcode(&request).expect("transcodes");
        let back: v1alpha::ServerReflectionRequest = transcode(&as_v1).expect("transcodes");
        assert_eq!(back, request);
    }

    #[test]
    fn missing_dependency_is_reported() {
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("a.proto".into()),
                dependency: vec!["b.proto".into()],
                ..Default::default()
            }],
        };
        let error = DescriptorIndex::from_encoded_set(&set.encode_to_vec(), Vec::new())
            .expect_err("b.proto is missing");
        assert!(matches!(error, ReflectionError::MissingDependency { .. }));
    }
}
