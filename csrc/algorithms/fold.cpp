#include "fold.h"

namespace pyallreduce {

PowerOfTwoFold::PowerOfTwoFold(int world_size) : p2(1), lg_p2(0) {
  while (p2 * 2 <= world_size) {
    p2 *= 2;
    ++lg_p2;
  }
  extra = world_size - p2;
}

int PowerOfTwoFold::virtual_rank(int rank) const {
  if (rank < 2 * extra) return rank % 2 == 1 ? rank / 2 : -1;
  return rank - extra;
}

}  // namespace pyallreduce
