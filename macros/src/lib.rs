//! Derive macros for Manta. Use them through `manta_actors` (or `manta`),
//! which re-exports them beside the traits they implement.

use proc_macro::TokenStream;
use quote::quote;
use syn::{DeriveInput, LitStr, parse_macro_input};

/// Implements `manta_actors::Message` for a serde type.
///
/// ```text
/// #[derive(Debug, Serialize, Deserialize, Message)]
/// #[message(name = "bank.Account")]       // default: the module path and type name
/// enum Account { Deposit(u64), Balance(ReplyTo<u64>) }
/// ```
///
/// `#[message(local)]` marks a type that never leaves its node (it may hold
/// a channel, an `Arc`, a tensor on a device): it needs no serde, and other
/// nodes cannot address its actors (`where_is`, `spawn_on` and remote
/// handles take only serde types, and a node refuses requests for it).
///
/// The name is the type's identity on the wire. Its default,
/// `concat!(module_path!(), "::", "Account")`, is fixed by the source (not
/// by the compiler, as `std::any::type_name` is), so nodes built by
/// different compilers agree; moving or renaming the type changes it, so
/// set `name` explicitly for types whose path may change while older nodes
/// still run. The generated impl names `::manta_actors` when the crate
/// depends on manta-actors, `::manta::actors` otherwise; `#[message(crate =
/// "path")]` sets it.
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let mut name: Option<LitStr> = None;
    let mut local = false;
    let mut krate: Option<syn::Path> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("message")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("reply") {
                Err(meta
                    .error("replies are typed per request: give the variant a `ReplyTo<T>` field"))
            } else if meta.path.is_ident("local") {
                local = true;
                Ok(())
            } else if meta.path.is_ident("name") {
                name = Some(meta.value()?.parse()?);
                Ok(())
            } else if meta.path.is_ident("crate") {
                let lit: LitStr = meta.value()?.parse()?;
                krate = Some(lit.parse()?);
                Ok(())
            } else {
                Err(meta.error("expected `name = \"...\"`, `local` or `crate = \"path\"`"))
            }
        })?;
    }
    let ident = &input.ident;
    let (impl_g, ty_g, where_c) = input.generics.split_for_impl();
    let name = match name {
        Some(n) => quote!(#n),
        None => {
            let s = ident.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #s))
        }
    };
    let krate = match krate {
        Some(p) => quote!(#p),
        None => default_crate_path(),
    };
    let decode = if local {
        quote!(::core::option::Option::None)
    } else {
        quote!(::core::option::Option::Some(#krate::wire::decode::<Self>))
    };
    Ok(quote! {
        impl #impl_g #krate::Message for #ident #ty_g #where_c {
            const NAME: &'static str = #name;
            const DECODE: ::core::option::Option<#krate::wire::Decode<Self>> = #decode;
        }
    })
}

/// Where `Message` lives for the crate being compiled: `::manta_actors` when
/// it depends on manta-actors itself (or is it), else the facade's
/// `::manta::actors`. `#[message(crate = "...")]` overrides it (a renamed
/// dependency, say).
fn default_crate_path() -> proc_macro2::TokenStream {
    let pkg = std::env::var("CARGO_PKG_NAME").unwrap_or_default();
    let direct = pkg == "manta-actors"
        || std::env::var("CARGO_MANIFEST_DIR")
            .ok()
            .and_then(|d| std::fs::read_to_string(std::path::Path::new(&d).join("Cargo.toml")).ok())
            .is_some_and(|m| m.contains("manta-actors"));
    if direct {
        quote!(::manta_actors)
    } else {
        quote!(::manta::actors)
    }
}
