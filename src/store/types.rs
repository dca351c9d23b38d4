//! Domain enums in and out of text columns, on both engines: a row holds an `OrderFlow` or a
//! `RefundStatus`, never a string that code compares to literals. A value the domain does not know
//! fails the row's decoding loudly instead of being read as something else. The domain itself
//! knows nothing of SQL; these impls live here.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};

use crate::domain::credits::CreditKind;
use crate::domain::ledger::EventStatus;
use crate::domain::orders::{DisputeState, GrantKind, GrantState, OrderFlow, OrderStatus, RefundStatus};

macro_rules! text_enum {
    ($db:ty; $($t:ty),+) => {$(
        impl Type<$db> for $t {
            fn type_info() -> <$db as Database>::TypeInfo {
                <&str as Type<$db>>::type_info()
            }

            fn compatible(ty: &<$db as Database>::TypeInfo) -> bool {
                <&str as Type<$db>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, $db> for $t {
            fn decode(value: <$db as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <&str as Decode<$db>>::decode(value)?;
                <$t>::parse(text).ok_or_else(|| format!("{text:?} is not a {}", stringify!($t)).into())
            }
        }

        impl<'q> Encode<'q, $db> for $t {
            fn encode_by_ref(&self, buf: &mut <$db as Database>::ArgumentBuffer<'q>) -> Result<IsNull, BoxDynError> {
                let text: &'q str = self.as_str();
                <&str as Encode<'q, $db>>::encode_by_ref(&text, buf)
            }
        }
    )+};
}

text_enum!(Sqlite; OrderStatus, OrderFlow, DisputeState, GrantKind, GrantState, RefundStatus, EventStatus);
text_enum!(Postgres; OrderStatus, OrderFlow, DisputeState, GrantKind, GrantState, RefundStatus, EventStatus);
text_enum!(Sqlite; CreditKind);
text_enum!(Postgres; CreditKind);
